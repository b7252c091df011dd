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

The section needs only ``\usepackage{graphicx}`` in the preamble (tables use
plain ``\hline`` rules, no extra packages).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import jinja2

from mammography.report.content import ReportContent
from mammography.report.tables import METRIC_COLUMNS, MetricTable

__all__ = ["tex_escape", "default_article_dir", "render_latex", "latex_environment"]

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
    "\u00b7": r"\textperiodcentered{}",
    "\u00b1": r"$\pm$",
    "\u2014": "---",
    "\u2013": "--",
    "\u03ba": r"$\kappa$",
    "\u2264": r"$\le$",
    "\u2265": r"$\ge$",
    "\u00d7": r"$\times$",
    "\u03c1": r"$\rho$",
    "\u2192": r"$\rightarrow$",
}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIALS))


def tex_escape(text: object) -> str:
    """Escape ``text`` for LaTeX body text (underscores in run ids, %, &, ±, ·, ...)."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIALS[m.group(0)], str(text))


def default_article_dir(tex_path: str | Path) -> Path:
    """The folder the article is compiled from: the parent of ``sections/``, else the .tex file's folder."""
    tex_path = Path(os.path.abspath(tex_path))
    parent = tex_path.parent
    return parent.parent if parent.name == "sections" else parent


def _graphics_path(path: Path, article_dir: Path) -> str:
    """``path`` relative to ``article_dir``, with forward slashes (what ``\\includegraphics`` expects)."""
    return Path(os.path.relpath(path, article_dir)).as_posix()


@lru_cache(maxsize=1)
def latex_environment() -> jinja2.Environment:
    """Jinja2 environment for the LaTeX templates (TeX-safe delimiters, strict undefined)."""
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
    return env


def _table_rows(table: MetricTable) -> dict:
    """Escaped cell texts of ``table`` for the template."""
    cells = [[tex_escape(table.cell(i, j)) for j in range(len(table.keys))] for i in range(len(table.row_labels))]
    summary = [tex_escape(table.summary(j)) for j in range(len(table.keys))]
    return {"labels": [tex_escape(x) for x in table.row_labels], "cells": cells, "summary": summary,
            "has_stored": not all(table.counted)}


def render_latex(content: ReportContent, article_dir: str | Path) -> str:
    """Render the LaTeX section for ``content``; figure paths relative to ``article_dir``."""
    article_dir = Path(os.path.abspath(article_dir))
    headers = {k: tex for k, tex, _ in METRIC_COLUMNS}

    def fig(ref):
        return None if ref is None else {
            "path": _graphics_path(ref.path, article_dir),
            "label": ref.label,
            "caption": ref.caption,
            "env": "figure*" if ref.wide else "figure",
            "width": r"\textwidth" if ref.wide else r"\columnwidth",
        }

    seeds = [
        {"run_id": s.run_id, "seed": s.seed, "figure": fig(s.figure), "layer_figure": fig(s.layer_figure)}
        for s in content.seeds
    ]
    cvs = [
        {
            "cv_id": c.cv_id,
            "seed": c.seed,
            "k": c.k,
            "label": c.table_label,
            "table": _table_rows(c.table),
            "headers": [headers[k] for k in c.table.keys],
            "figures": [fig(f) for f in c.figures],
            "caption": c.caption,
        }
        for c in content.cvs
    ]
    seed_table = None
    if content.seed_table is not None:
        seed_table = _table_rows(content.seed_table)
        seed_table["headers"] = [headers[k] for k in content.seed_table.keys]
    attention = None
    if content.attention is not None:
        a = content.attention
        attention = {"sentences": a.sentences, "tables": a.latex_tables, "table_labels": a.table_labels,
                     "figures": [fig(f) for f in a.figures]}
    return latex_environment().get_template("density_model.tex.j2").render(
        content=content, seeds=seeds, seed_table=seed_table, cvs=cvs, attention=attention
    )
