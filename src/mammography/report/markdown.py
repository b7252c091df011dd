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
resolve them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jinja2

from mammography.errors import ConfigError
from mammography.report.content import ReportContent
from mammography.report.tables import METRIC_COLUMNS, MetricTable

__all__ = ["BEGIN_MARKER", "END_MARKER", "md_escape", "markdown_environment", "replace_marked_block",
           "render_markdown_block", "update_markdown"]

BEGIN_MARKER = "<!-- mammography:report-pack:begin -->"
END_MARKER = "<!-- mammography:report-pack:end -->"


def md_escape(text: object) -> str:
    """Escape characters that would break a Markdown table cell or emphasis."""
    out = str(text)
    for ch in ("\\", "|", "*", "_", "[", "]", "<", ">"):
        out = out.replace(ch, "\\" + ch)
    return out


def _md_link(path: Path, base: Path) -> str:
    rel = Path(os.path.relpath(path, base)).as_posix()
    return f"<{rel}>" if any(c in rel for c in " ()") else rel


@lru_cache(maxsize=1)
def markdown_environment() -> jinja2.Environment:
    """Jinja2 environment for the Markdown templates (strict undefined, ``md`` escape filter)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mammography.report", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = md_escape
    return env


def _table(table: MetricTable, first: str) -> list[str]:
    headers = {k: md for k, _, md in METRIC_COLUMNS}
    lines = [
        "| " + " | ".join([first] + [headers[k] for k in table.keys]) + " |",
        "|" + "---|" + "---:|" * len(table.keys),
    ]
    for i, label in enumerate(table.row_labels):
        lines.append("| " + " | ".join([md_escape(label)] + [table.cell(i, j) for j in range(len(table.keys))]) + " |")
    lines.append("| " + " | ".join(["**mean ± sd**"] + [table.summary(j) for j in range(len(table.keys))]) + " |")
    return lines


def render_markdown_block(content: ReportContent, markdown_path: str | Path) -> str:
    """The block (markers included, ending with a newline) for ``content``; image paths relative to the file."""
    base = Path(os.path.abspath(markdown_path)).parent

    def fig(ref):
        return None if ref is None else {"path": _md_link(ref.path, base), "alt": ref.alt, "caption": ref.caption}

    seeds = [{"seed": s.seed, "run_id": s.run_id, "figure": fig(s.figure), "layer_figure": fig(s.layer_figure)}
             for s in content.seeds]
    cvs = [{"cv_id": c.cv_id, "seed": c.seed, "k": c.k, "table": _table(c.table, "Fold"),
            "figures": [fig(f) for f in c.figures], "caption": c.caption} for c in content.cvs]
    seed_table = _table(content.seed_table, "Seed") if content.seed_table is not None else None
    attention = None
    if content.attention is not None:
        a = content.attention
        attention = {"sentences": a.sentences, "tables": a.markdown_tables, "figures": [fig(f) for f in a.figures]}
    body = markdown_environment().get_template("density_block.md.j2").render(
        content=content, seeds=seeds, cvs=cvs, seed_table=seed_table, attention=attention,
        seed_stored=content.seed_table is not None and not all(content.seed_table.counted),
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
