"""The generated Markdown block and its replacement inside a user's Markdown file.

The block sits between two marker comments::

    <!-- mammography:report-pack:begin -->
    ... generated, rewritten on every run ...
    <!-- mammography:report-pack:end -->

:func:`replace_marked_block` swaps what lies between them and keeps every
byte outside the markers (line endings included). A file without markers
gets the block appended; a missing file is created with just the block.
Markers that are unbalanced, repeated or out of order are an error rather
than a guess, so hand-written text is never lost.

Image paths are relative to the Markdown file's folder, as Markdown renderers
resolve them, and percent-encoded. Every text from a file or folder name is
escaped (:func:`md_escape`); the regenerate command sits in an HTML comment
that it cannot end (:func:`html_comment`).
"""

from __future__ import annotations

import os
import urllib.parse
from functools import lru_cache
from pathlib import Path

import jinja2

from mammography.errors import ConfigError
from mammography.report.content import ReportContent
from mammography.report.plaintext import one_line
from mammography.report.tables import cv_text_table, seed_text_table

__all__ = ["BEGIN_MARKER", "END_MARKER", "md_escape", "md_cell", "html_comment", "md_link", "markdown_environment",
           "replace_marked_block", "render_markdown_tables", "render_markdown_block", "update_markdown"]

BEGIN_MARKER = "<!-- mammography:report-pack:begin -->"
END_MARKER = "<!-- mammography:report-pack:end -->"


#: characters that start Markdown (or GitHub) markup inside a line: emphasis, code, links, HTML,
#: tables, strike-through, maths, entities and headings; each is written with a backslash
_MD_SPECIALS = frozenset("\\`*_[]<>|~$&#")


def md_escape(text: object) -> str:
    """``text`` as Markdown inline text that renders exactly these characters (on GitHub too).

    Every character that could start markup or raw HTML is backslash-escaped
    and line breaks become spaces, so a file or folder name can neither
    format nor inject anything.
    """
    return "".join("\\" + ch if ch in _MD_SPECIALS else ch for ch in one_line(text))


def md_cell(text: object) -> str:
    """A table cell: :func:`md_escape`; the LaTeX tables' ``\\n`` line breaks become spaces."""
    return md_escape(str(text).replace("\n", " "))


def html_comment(text: object) -> str:
    """``text`` for the inside of an HTML comment: one line, and no ``--`` that could end the comment."""
    out = one_line(text)
    while "--" in out:
        out = out.replace("--", "- -")
    return out


def md_link(path: Path, base: Path) -> str:
    """Link target of ``path`` relative to ``base``, percent-encoded (spaces, brackets, ``<`` ...)."""
    return urllib.parse.quote(Path(os.path.relpath(path, base)).as_posix(), safe="/")


@lru_cache(maxsize=1)
def markdown_environment() -> jinja2.Environment:
    """Jinja2 environment for the Markdown templates (strict undefined).

    Filters: ``md`` (:func:`md_escape`), ``mdcell`` (:func:`md_cell`) and
    ``htmlcomment`` (:func:`html_comment`).
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mammography.report", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = md_escape
    env.filters["mdcell"] = md_cell
    env.filters["htmlcomment"] = html_comment
    return env


def render_markdown_tables(tables) -> str:
    """:class:`~mammography.report.tables.TextTable` records as Markdown (the file analyze writes)."""
    return markdown_environment().get_template("analysis_tables.md.j2").render(tables_=tables)


def render_markdown_block(content: ReportContent, markdown_path: str | Path) -> str:
    """The block (markers included, ending with a newline) for ``content``; image paths relative to the file."""
    base = Path(os.path.abspath(markdown_path)).parent

    def fig(ref):
        return None if ref is None else {"path": md_link(ref.path, base), "alt": ref.alt, "caption": ref.caption}

    seeds = [{"seed": s.seed, "run_id": s.run_id, "figure": fig(s.figure), "layer_figure": fig(s.layer_figure)}
             for s in content.seeds]
    cvs = [{"figures": [fig(f) for f in c.figures],
            "table": cv_text_table(c.table, cv_id=c.cv_id, k=c.k, seed=c.seed, label=c.table_label,
                                   description=c.caption)}
           for c in content.cvs]
    seed_table = seed_text_table(content.seed_table) if content.seed_table is not None else None
    attention = None
    if content.attention is not None:
        a = content.attention
        attention = {"sentences": a.sentences, "tables": a.tables, "figures": [fig(f) for f in a.figures]}
    body = markdown_environment().get_template("density_block.md.j2").render(
        content=content, seeds=seeds, cvs=cvs, seed_table=seed_table, attention=attention,
    )
    return f"{BEGIN_MARKER}\n{body.strip()}\n{END_MARKER}\n"


def replace_marked_block(text: str, block: str, *, source: str = "the Markdown file") -> str:
    """Put ``block`` (markers included) in place of the marked block of ``text``.

    Parameters
    ----------
    text : the current file content ('' for a new file).
    block : the new block, starting with :data:`BEGIN_MARKER` and ending with
        :data:`END_MARKER` (plus an optional newline).
    source : file name used in error messages.

    Returns
    -------
    The new content: everything before the begin marker and after the end
    marker unchanged; ``block`` appended (after a blank line) when ``text``
    has no markers.
    """
    n_begin, n_end = text.count(BEGIN_MARKER), text.count(END_MARKER)
    if n_begin == 0 and n_end == 0:
        if not text:
            return block
        sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + block
    if n_begin != 1 or n_end != 1:
        raise ConfigError(
            f"{source} has {n_begin} '{BEGIN_MARKER}' and {n_end} '{END_MARKER}' markers; "
            "keep exactly one of each (or remove both to have the block appended)"
        )
    start, end = text.index(BEGIN_MARKER), text.index(END_MARKER)
    if end < start:
        raise ConfigError(f"{source}: the end marker comes before the begin marker; fix or remove them")
    after = text[end + len(END_MARKER):]
    new_block = block
    if block.endswith("\n") and after.startswith(("\n", "\r\n")):
        new_block = block[:-1]  # the file's own line break after the end marker stays as it was
    return text[:start] + new_block + after


def update_markdown(markdown_path: str | Path, block: str) -> str:
    """The new content of ``markdown_path`` with ``block`` in place (the file is not written here)."""
    path = Path(markdown_path)
    text = ""
    if path.exists():
        try:
            # newline='' keeps the file's own line endings outside the block
            with open(path, encoding="utf-8", newline="") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text; cannot insert the report block") from None
    return replace_marked_block(text, block, source=str(path))
