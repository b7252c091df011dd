"""What a report says, independent of the format it is written in.

:func:`~mammography.report.pack.report_pack` fills a :class:`ReportContent`;
the LaTeX and Markdown renderers (:mod:`~mammography.report.latex`,
:mod:`~mammography.report.markdown`) turn the same record into text, so both
always show the same figures, captions and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mammography.report.tables import MetricTable, TextTable

__all__ = ["FigureRef", "SeedEntry", "CVEntry", "AttentionEntry", "ReportContent"]


@dataclass(frozen=True)
class FigureRef:
    """A figure file and how the article refers to it.

    Attributes
    ----------
    path : absolute path where the PNG is written.
    label : LaTeX label, e.g. ``"fig:density-gradcam-seed42"``.
    caption : plain-text caption (Unicode; escaped by each renderer).
    alt : short alternative text for Markdown.
    wide : True when the figure is wider than one column (``figure*`` in LaTeX).
    """

    path: Path
    label: str
    caption: str
    alt: str
    wide: bool = False


@dataclass(frozen=True)
class SeedEntry:
    """One training run (one seed) in the report."""

    run_id: str
    seed: int
    checkpoint_short: str
    n_val: int
    n_disagree: int
    figure: FigureRef
    layer_figure: FigureRef | None = None


@dataclass(frozen=True)
class CVEntry:
    """One cross-validation run: its per-fold table and fold figures.

    ``caption`` is the table's caption (plain text, escaped by each renderer):
    where the numbers come from and what the run's files could not give.
    """

    cv_id: str
    seed: int | None
    k: int
    table: MetricTable
    table_label: str
    figures: tuple[FigureRef, ...] = ()
    caption: str = ""


@dataclass(frozen=True)
class AttentionEntry:
    """The attention analysis of the seed runs (:mod:`mammography.report.attention`).

    Attributes
    ----------
    sentences : plain-text summary sentences (escaped by each renderer); each
        states a number with its baseline and a verdict from their comparison.
    tables : the analysis tables (:class:`~mammography.report.tables.TextTable`),
        rendered by the LaTeX and the Markdown templates from the same rows.
    figures : the consistency figure and the spurious-attention figures of flagged runs.
    """

    sentences: tuple[str, ...]
    tables: tuple[TextTable, ...] = ()
    figures: tuple[FigureRef, ...] = ()


@dataclass(frozen=True)
class ReportContent:
    """Everything the generated LaTeX section and Markdown block show."""

    seeds: tuple[SeedEntry, ...]
    seed_table: MetricTable | None
    cvs: tuple[CVEntry, ...] = ()
    method: str = "gradcam"
    layer: str = "features.8"
    selection: str = ""
    per_class: int = 4
    command: str = "mammography report-pack"
    version: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    attention: AttentionEntry | None = None
