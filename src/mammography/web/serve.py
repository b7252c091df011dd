"""Serve an explorer site on 127.0.0.1 (convenience only: the site also opens from file://).

Standard library only (:mod:`http.server`); bound to the loopback interface so
nothing is exposed to the network.
"""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path

from mammography.errors import ConfigError

__all__ = ["HOST", "make_server", "start_server", "serve"]

log = logging.getLogger(__name__)

#: the only address the explorer is served on
HOST = "127.0.0.1"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; one log line per request at DEBUG level instead of stderr noise."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".json": "application/json",
    }

    def log_message(self, format, *args):  # noqa: A002 - http.server API
        log.debug("explorer: " + format, *args)


def make_server(directory: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``directory`` on 127.0.0.1 (not yet serving).

    Parameters
    ----------
    directory : the site folder (holds ``index.html``).
    port : TCP port; 0 picks a free one (read it from ``server.server_port``).

    Raises
    ------
    ConfigError
        The folder holds no ``index.html``, or the port cannot be opened.
    """
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise ConfigError(f"{directory} holds no index.html; build the site first with 'mammography explore'")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        return http.server.ThreadingHTTPServer((HOST, int(port)), handler)
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
