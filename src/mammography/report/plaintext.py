"""Plain text that cannot break the line it is put on (shared by the LaTeX and the Markdown writers)."""

from __future__ import annotations

import unicodedata

__all__ = ["is_line_break", "one_line"]


def is_line_break(ch: str) -> bool:
    """True for white space and control or format characters: what could end a line or a comment."""
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def one_line(text: object) -> str:
    """``text`` with every character of :func:`is_line_break` replaced by a space."""
    return "".join(" " if is_line_break(ch) else ch for ch in str(text))
