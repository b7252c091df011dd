r"""The generated LaTeX section (``sections/density_model.tex``).

Rendered with Jinja2 from ``templates/density_model.tex.j2`` using delimiters
that cannot clash with TeX braces: ``((( var )))``, ``((* block *))``,
``((= comment =))``.

Figure paths are written relative to the *article directory*: the folder the
main document is compiled from, because ``\includegraphics`` resolves paths
against it, not against the folder of an ``\input`` file. By default that is
the parent of the ``sections/`` folder holding the .tex file (e.g.
``Article/`` for ``Article/sections/density_model.tex``), so a figure in
``Article/assets/`` appears as ``assets/density_gradcam_seed42.png``.

The section needs only ``\usepackage{graphicx}`` in the preamble; its tables
use booktabs' rules when the article loads booktabs, and rules of the same
weights otherwise. How figures and tables are bounded so that they fit any
standard class is in :mod:`mammography.report.texlayout`. Every string that
comes from a file or folder name is escaped (:func:`tex_escape`) or, for
figure paths, checked (:func:`graphics_path`); the regenerate comment is
kept on one line (:func:`tex_comment`).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import jinja2

from mammography.errors import ConfigError
from mammography.report.content import ReportContent
from mammography.report.plaintext import is_line_break, one_line
from mammography.report.tables import cv_text_table, seed_text_table
from mammography.report.texlayout import DEFAULT_LAYOUT, MAX_HEIGHT, MIN_TABLE_PT, check_layout

__all__ = ["tex_escape", "tex_comment", "tex_cell", "graphics_path", "default_article_dir", "render_latex",
           "render_tables", "latex_environment"]

_TEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # the default OT1 font encoding prints < > | " as other glyphs (< becomes an inverted !)
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    '"': r"\textquotedbl{}",
    "\u00b7": r"\textperiodcentered{}",
    "\u00b1": r"\ensuremath{\pm}",
    "\u2212": r"\ensuremath{-}",
    "\u2014": "---",
    "\u2013": "--",
    "\u2026": r"\ldots{}",
    "\u03ba": r"\ensuremath{\kappa}",
    "\u03c1": r"\ensuremath{\rho}",
    "\u2264": r"\ensuremath{\le}",
    "\u2265": r"\ensuremath{\ge}",
    "\u2260": r"\ensuremath{\ne}",
    "\u00d7": r"\ensuremath{\times}",
    "\u2192": r"\ensuremath{\rightarrow}",
    "\u2717": r"\ensuremath{\times}",
    "`": r"\textasciigrave{}",
    "[": "{[}",
    "]": "{]}",
    "*": "{*}",
}
#: characters pdflatex's default set-up typesets as they are: printable ASCII without the
#: specials above, and the Latin-1 letters (inputenc's utf8 maps them to accented glyphs)
_PLAIN = re.compile(r"[ !'()*+,\-./0-9:;=?@A-Z\[\]`a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff]")


def _tex_char(ch: str) -> str:
    if ch in _TEX_SPECIALS:
        return _TEX_SPECIALS[ch]
    if _PLAIN.fullmatch(ch):
        return ch
    if is_line_break(ch):
        return " "  # newlines, tabs and control characters never reach TeX's line reader
    # anything else (CJK, emoji, rare symbols) would stop pdflatex: show its code point instead
    return f"[U+{ord(ch):04X}]"


#: pairs of characters TeX fonts join into a ligature ("--" en dash, "''" closing quote)
_LIGATURE_PAIRS = ("--", "''")
#: a word longer than this (a run id, a file name) may break across lines ...
_LONG_WORD = 20
#: ... after one of these characters, or after this many characters without one
_BREAK_AFTER = frozenset("_/-.\\{}^~,;:=+)]|")
_BREAK_EVERY = 16


def _escape_word(word: str) -> str:
    """One word (no white space) of :func:`tex_escape`."""
    long = len(word) > _LONG_WORD
    out, run = "", 0
    for ch in word:
        piece = _tex_char(ch)
        if out and (out[-1] + piece[0]) in _LIGATURE_PAIRS:
            out += "{}"
        out += piece
        if long:
            run = 0 if ch in _BREAK_AFTER else run + 1
            if ch in _BREAK_AFTER or run >= _BREAK_EVERY:
                out += r"\allowbreak{}"
                run = 0
    return out


def tex_escape(text: object) -> str:
    """``text`` as LaTeX body text that prints exactly these characters and runs nothing.

    Every TeX special character is escaped (``\\ { } $ & # ^ _ ~ %``), ``< > | "``
    get their text commands (the default font encoding prints other glyphs for
    them), ``[ ] *`` are braced (after a ``\\\\`` they would be read as its
    arguments), ligatures that would change the text (``--``, ``''``, ``?`` +
    backquote) are broken, Greek letters and maths symbols are set in maths,
    U+2212 is a true minus sign, line breaks and control characters become
    spaces, and characters pdflatex cannot typeset without extra packages are
    written as ``[U+XXXX]``. Words longer than 20 characters (run ids, file
    names) may break after ``_ / - .`` and the like, so they cannot overflow a
    column. Safe for file and folder names of any origin.
    """
    return " ".join(_escape_word(word) for word in re.split(r"[\s\x00-\x1f\x7f\x85\u2028\u2029]+", str(text))
                    if word) + (" " if re.search(r"\s$", str(text)) and str(text).strip() else "")


def tex_comment(text: object) -> str:
    """``text`` for the rest of a ``%`` comment line: no character can end the line."""
    return one_line(text)


def tex_cell(text: object, align: str = "c") -> str:
    """A table cell: :func:`tex_escape`, with ``\\n`` in ``text`` stacking lines in one cell aligned ``l|c|r``."""
    lines = str(text).split("\n")
    if len(lines) == 1:
        return tex_escape(text)
    if align not in ("l", "c", "r"):
        raise ValueError(f"cell alignment must be l, c or r, got {align!r}")
    return rf"\MammoCell{{{align}}}{{" + r"\\".join(tex_escape(line) for line in lines) + "}"


def default_article_dir(tex_path: str | Path) -> Path:
    """The folder the article is compiled from: the parent of ``sections/``, else the .tex file's folder."""
    tex_path = Path(os.path.abspath(tex_path))
    parent = tex_path.parent
    return parent.parent if parent.name == "sections" else parent


#: what a figure path in ``\\includegraphics`` may hold: no TeX special character, no space
_SAFE_GRAPHICS_PATH = re.compile(r"[A-Za-z0-9._/+-]+")


def graphics_path(path: str | Path, article_dir: str | Path) -> str:
    """``path`` relative to ``article_dir``, with forward slashes (what ``\\includegraphics`` expects).

    Raises :class:`ConfigError` when the result holds anything but letters,
    digits and ``. _ / + -``: TeX reads a file name as code, and a ``%``,
    ``#``, brace or backslash there cannot be escaped (report-pack names its
    own files with safe slugs, so only a user's folder names can cause this).
    """
    rel = Path(os.path.relpath(path, article_dir)).as_posix()
    if not _SAFE_GRAPHICS_PATH.fullmatch(rel):
        raise ConfigError(
            f"the figure path {rel!r} (relative to the article folder {article_dir}) has characters LaTeX cannot "
            "read in a file name; use folder names of letters, digits, '.', '_' and '-' for --assets-dir and "
            "--article-dir"
        )
    return rel


@lru_cache(maxsize=1)
def latex_environment() -> jinja2.Environment:
    """Jinja2 environment for the LaTeX templates (TeX-safe delimiters, strict undefined).

    Filters: ``tex`` (:func:`tex_escape`), ``texcell`` (:func:`tex_cell`) and
    ``texcomment`` (:func:`tex_comment`); globals: the layout constants of
    :mod:`mammography.report.texlayout` used by ``tex_macros.tex.j2``.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mammography.report", "templates"),
        block_start_string="((*",
        block_end_string="*))",
        variable_start_string="(((",
        variable_end_string=")))",
        comment_start_string="((=",
        comment_end_string="=))",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["tex"] = tex_escape
    env.filters["texcell"] = tex_cell
    env.filters["texcomment"] = tex_comment
    env.globals.update(max_height=MAX_HEIGHT, min_pt=MIN_TABLE_PT)
    return env


def render_tables(tables, layout: str = DEFAULT_LAYOUT) -> str:
    """A stand-alone LaTeX fragment (layout macros included) of :class:`TextTable` records."""
    return latex_environment().get_template("analysis_tables.tex.j2").render(tables_=tables,
                                                                             layout=check_layout(layout))


def render_latex(content: ReportContent, article_dir: str | Path, layout: str = DEFAULT_LAYOUT) -> str:
    """Render the LaTeX section for ``content``; figure paths relative to ``article_dir``.

    ``layout`` is one of :data:`~mammography.report.texlayout.LAYOUTS`.
    Raises :class:`ConfigError` when a figure's path relative to the article
    folder has characters ``\\includegraphics`` cannot take.
    """
    article_dir = Path(os.path.abspath(article_dir))

    def fig(ref):
        return None if ref is None else {
            "path": graphics_path(ref.path, article_dir),
            "label": ref.label,
            "caption": ref.caption,
            "wide": int(bool(ref.wide)),
        }

    seeds = [
        {"run_id": s.run_id, "seed": s.seed, "figure": fig(s.figure), "layer_figure": fig(s.layer_figure)}
        for s in content.seeds
    ]
    cvs = [{"cv_id": c.cv_id, "figures": [fig(f) for f in c.figures],
            "table": cv_text_table(c.table, cv_id=c.cv_id, k=c.k, seed=c.seed, label=c.table_label,
                                   description=c.caption)}
           for c in content.cvs]
    seed_table = None if content.seed_table is None else seed_text_table(content.seed_table)
    attention = None
    if content.attention is not None:
        a = content.attention
        attention = {"sentences": a.sentences, "tables": a.tables, "figures": [fig(f) for f in a.figures]}
    return latex_environment().get_template("density_model.tex.j2").render(
        content=content, seeds=seeds, seed_table=seed_table, cvs=cvs, attention=attention,
        layout=check_layout(layout),
    )
