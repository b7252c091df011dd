"""Serve an explorer site on 127.0.0.1 (convenience only: the site also opens from file://).

Standard library only (:mod:`http.server`); bound to the loopback interface so
nothing is exposed to the network. A web page the user visits can still make
the browser send requests to 127.0.0.1 under a name it controls (DNS
rebinding) and read the answers as its own: every request whose ``Host``
header is not ``127.0.0.1:PORT`` or ``localhost:PORT`` is therefore refused
with 403, so patient ids and images never leave through the browser. A
client that drops its connection is logged at DEBUG level, never as a
traceback.
"""

from __future__ import annotations

import functools
import http.server
import logging
import sys
import threading
from pathlib import Path

from mammography.errors import ConfigError

__all__ = ["HOST", "allowed_hosts", "make_server", "start_server", "serve"]

log = logging.getLogger(__name__)

#: the only address the explorer is served on
HOST = "127.0.0.1"


def allowed_hosts(port: int) -> frozenset[str]:
    """``Host`` header values the server answers on ``port`` (lower case)."""
    return frozenset({f"{HOST}:{port}", f"localhost:{port}"})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files for the loopback ``Host`` names only; one DEBUG log line per request."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".json": "application/json",
    }

    def _host_allowed(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host in allowed_hosts(self.server.server_port):
            return True
        self.send_error(403, "Forbidden: the explorer answers only to 127.0.0.1 and localhost")
        return False

    def do_GET(self):  # noqa: N802 - http.server API
        if self._host_allowed():
            super().do_GET()

    def do_HEAD(self):  # noqa: N802 - http.server API
        if self._host_allowed():
            super().do_HEAD()

    def log_message(self, format, *args):  # noqa: A002 - http.server API
        log.debug("explorer: " + format, *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # noqa: D401 - socketserver API
        """A dropped or broken connection: one DEBUG line instead of a traceback on stderr."""
        exc = sys.exc_info()[1]
        log.debug("explorer: request from %s failed: %s: %s", client_address, type(exc).__name__, exc)


def make_server(directory: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``directory`` on 127.0.0.1 (not yet serving).

    Parameters
    ----------
    directory : the site folder (holds ``index.html``).
    port : TCP port 0..65535; 0 picks a free one (read it from ``server.server_port``).

    Raises
    ------
    ConfigError
        The folder holds no ``index.html``, the port is out of range or cannot be opened.
    """
    from mammography.limits import check_int

    port = check_int(port, "--port", 0, 65535)
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise ConfigError(f"{directory} holds no index.html; build the site first with 'mammography explore'")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        return _Server((HOST, port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {HOST}:{port} ({exc.strerror}); choose another --port") from exc


def start_server(directory: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``directory`` from a background thread; returns (server, base URL).

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    server = make_server(directory, port)
    threading.Thread(target=server.serve_forever, name="explorer-http", daemon=True).start()
    return server, f"http://{HOST}:{server.server_port}/"


def serve(directory: str | Path, port: int = 8000, announce=print) -> None:
    """Serve ``directory`` on 127.0.0.1 until interrupted (Ctrl-C).

    Parameters
    ----------
    directory : the site folder.
    port : TCP port (0 = any free port).
    announce : called once with the line that gives the URL.
    """
    server = make_server(directory, port)
    announce(f"serving {directory} at http://{HOST}:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
