"""How the generated LaTeX places figures and tables on the page.

A report section is ``\\input`` into articles of any class: one column or
two, 10-12 pt, a journal's own class. Nothing at generation time knows the
column width, so the section carries a few macros
(``templates/tex_macros.tex.j2``) that decide when the article is compiled:

* every figure gets both a width bound (the column, or the full text width
  for a figure wider than a column in a two-column document, ``figure*``)
  and a height bound: at most :data:`MAX_HEIGHT` of ``\\textheight`` and
  never more than the page leaves after the figure's own caption, which is
  typeset and measured first; ``keepaspectratio`` keeps the shape. So no
  figure can be "too large for page" and no caption is pushed off it;
* every table is set in ``\\footnotesize`` (8 pt in a 10 pt article) with
  booktabs-style rules, measured, and spans both columns (``table*``) when it
  is wider than one; a table still wider than the text is shrunk to it, but
  never below :data:`MIN_TABLE_PT` (the rest would show as an overfull box,
  which the tests treat as a failure);
* :data:`LAYOUTS`: ``auto`` follows the document's column mode (the LaTeX
  kernel's ``\\if@twocolumn``); ``onecolumn`` never uses the starred floats;
  ``twocolumn`` always spans both columns with the wide floats.
"""

from __future__ import annotations

from mammography.errors import ConfigError

__all__ = ["LAYOUTS", "DEFAULT_LAYOUT", "MAX_HEIGHT", "MIN_TABLE_PT", "check_layout"]

LAYOUTS: tuple[str, ...] = ("auto", "onecolumn", "twocolumn")
DEFAULT_LAYOUT = "auto"
#: largest figure height as a fraction of \textheight (before its caption is subtracted)
MAX_HEIGHT = 0.8
#: smallest table text at print size (points); journals ask for at least 7 pt
MIN_TABLE_PT = 7.0


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else :class:`ConfigError`."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout
