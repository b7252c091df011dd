"""Checks on input files before anything reads them.

Paths come from manifests, run directories and flags, i.e. from other
people's files. Before a file is hashed, parsed or decoded it must be a
*regular* file: a FIFO blocks a reader forever, ``/dev/zero`` never ends, a
folder raises in odd places. Text formats are read with a size bound (and
JSON with a nesting bound), so a crafted ``summary.json`` cannot exhaust
memory or the interpreter's recursion limit. Every refusal is the caller's
one-line :class:`~mammography.errors.MammographyError` subclass, naming the
file and what to do.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from mammography.errors import MammographyError, printable

__all__ = [
    "MAX_CSV_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "check_path_text",
    "read_json_file",
    "read_text_bounded",
    "require_regular_file",
]

#: largest JSON file read (run summaries and metrics are a few kB)
MAX_JSON_BYTES = 16 << 20
#: deepest nesting of JSON arrays/objects accepted (ours nest 4 levels)
MAX_JSON_DEPTH = 64
#: largest CSV file read (a manifest of a million images is about 200 MB)
MAX_CSV_BYTES = 1 << 30

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_path_text(path, what: str, error: type[MammographyError]) -> Path:
    """``Path(path)``, refusing text no file system accepts (a NUL byte)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise error(f"{what} {printable(text)!s} contains a NUL byte, which no file name can hold; fix the path")
    return Path(text)


def require_regular_file(path, what: str, error: type[MammographyError], hint: str = "") -> os.stat_result:
    """``os.stat`` of ``path`` after checking it names an existing regular file (symbolic links followed).

    Raises ``error`` (one line: the file, what it is instead, ``hint``) otherwise.
    """
    path = check_path_text(path, what, error)
    tail = f"; {hint}" if hint else ""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {printable(path)} does not exist{tail}") from None
    except OSError as exc:
        raise error(f"{what} {printable(path)} cannot be read ({exc.strerror or exc}){tail}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{what} {printable(path)} is {kind}, not a regular file{tail}")
    return st


def read_text_bounded(path, what: str, error: type[MammographyError], limit: int, hint: str = "") -> str:
    """UTF-8 text of a regular file of at most ``limit`` bytes."""
    st = require_regular_file(path, what, error, hint)
    if st.st_size > limit:
        raise error(
            f"{what} {printable(path)} is {st.st_size / 1e6:.0f} MB, more than the {limit / 1e6:.0f} MB such a file "
            "can plausibly hold; check that it is the right file"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {printable(path)} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise error(f"{what} {printable(path)} cannot be read ({exc.strerror or exc})") from None


def _depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative: never recurses itself)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_json_file(path, what: str, error: type[MammographyError], *, limit: int = MAX_JSON_BYTES,
                   max_depth: int = MAX_JSON_DEPTH, hint: str = ""):
    """Parse a JSON file with size and nesting bounds (NaN literals, which Python writes, are accepted)."""
    text = read_text_bounded(path, what, error, limit, hint)
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{what} {printable(path)} is nested more deeply than any such file; check the file") from None
    except ValueError as exc:  # JSONDecodeError included
        raise error(f"{what} {printable(path)} is not valid JSON ({printable(exc)}){'; ' + hint if hint else ''}") from None
    if _depth(value, max_depth) > max_depth:
        raise error(f"{what} {printable(path)} nests more than {max_depth} levels deep; check the file")
    return value
