"""Metric tables: one row per seed or fold, and a mean ± standard deviation row.

Every table of a report is a :class:`TextTable` of plain-text (Unicode)
cells; the LaTeX and the Markdown templates render the same record, so the
article and the Markdown never disagree on a number. A ``"\\n"`` in a cell
or header is a line break the LaTeX table keeps (a narrower column) and the
Markdown table turns into a space.

Numbers are written by :func:`format_value` and :func:`format_percent`: a
fixed number of decimals, a true minus sign (U+2212) and a space before the
per cent sign, everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METRIC_COLUMNS", "METRIC_LEGEND", "MINUS", "TextTable", "MetricTable", "metric_table", "metric_text_table",
           "format_value", "format_percent"]

#: (metrics key, column header), in table order; "\n" breaks a header in the LaTeX table. Short, so
#: that a seed table fits one journal column at 8 pt; :data:`METRIC_LEGEND` spells them out.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("acc", "Acc."),
    ("kappa_quadratic", "\u03ba\n(quad.)"),
    ("macro_f1", "Macro\nF1"),
    ("auc_ovr", "AUC\n(OvR)"),
    ("bal_acc_adj", "Bal. acc.\n(adj.)"),
)
METRIC_LEGEND = (
    "Acc.: accuracy; \u03ba (quad.): Cohen's kappa with quadratic weights; Macro F1: F1 score averaged over the "
    "classes; AUC (OvR): one-vs-rest ROC AUC averaged over the classes present; Bal. acc. (adj.): balanced "
    "accuracy adjusted for chance (0 = chance, 1 = perfect)."
)

_MISSING = "\u2014"  # em dash
#: the minus sign of every number in report text
MINUS = "\u2212"


@dataclass(frozen=True)
class TextTable:
    """One table of a report, as plain text (each renderer escapes it).

    Attributes
    ----------
    key : short identifier (``seeds``, ``spurious``, ...).
    label : LaTeX label, e.g. ``tab:density-seeds``.
    title : a few words for the Markdown heading of the table.
    caption : caption text.
    headers : column headers; the first one heads the row labels.
    rows : rows of cells (first cell = row label).
    footer : summary rows set off by a rule (e.g. mean ± sd).
    notes : sentences printed under the table.
    """

    key: str
    label: str
    title: str
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    footer: tuple[tuple[str, ...], ...] = ()
    notes: tuple[str, ...] = ()


def format_value(value: float | None, digits: int = 3) -> str:
    """``0.8123 -> "0.812"``, ``-0.05 -> "−0.050"`` (U+2212); None, NaN or infinite -> an em dash;
    a value that rounds to zero has no sign."""
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    text = f"{float(value):.{digits}f}"
    if text.startswith("-"):
        return text[1:] if float(text) == 0 else MINUS + text[1:]
    return text


def format_percent(value: float | None) -> str:
    """``0.825 -> "82 %"`` (whole percent); None, NaN or infinite -> an em dash."""
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    return format_value(100 * float(value), 0) + " %"


@dataclass(frozen=True)
class MetricTable:
    """A table of metrics.

    Attributes
    ----------
    keys : metric keys, in column order.
    row_labels : one label per row (e.g. ``"42"`` for a seed, ``"1"`` for a fold).
    values : rows of floats (NaN when a metric is missing), shape (rows, keys).
    mean, sd : per-column mean and sample standard deviation (ddof=1) over
        the counted rows that have the metric; NaN when undefined (sd needs 2 rows).
    counted : per row, whether it enters ``mean`` and ``sd`` (a run's stored
        metrics shown beside its recomputed ones do not).
    """

    keys: tuple[str, ...]
    row_labels: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    counted: tuple[bool, ...] = ()

    def cell(self, row: int, col: int, digits: int = 3) -> str:
        return format_value(self.values[row][col], digits)

    def summary(self, col: int, digits: int = 3, pm: str = " \u00b1 ") -> str:
        """``"0.812 ± 0.034"``; only the mean when sd is undefined; an em dash when no row has the metric."""
        m, s = self.mean[col], self.sd[col]
        if math.isnan(m):
            return _MISSING
        if math.isnan(s):
            return format_value(m, digits)
        return f"{format_value(m, digits)}{pm}{format_value(s, digits)}"


def metric_table(rows: list[tuple], keys: tuple[str, ...] | None = None) -> MetricTable:
    """Build a :class:`MetricTable` from ``[(row_label, metrics_dict), ...]``.

    A row may be ``(row_label, metrics_dict, counted)``: ``counted=False``
    shows it without letting it enter the mean and standard deviation.
    Missing or None metrics become NaN and are left out of that column's mean
    and standard deviation.
    """
    keys = tuple(keys or (k for k, _ in METRIC_COLUMNS))
    counted = np.array([True if len(r) < 3 else bool(r[2]) for r in rows], dtype=bool)
    values = np.array(
        [[np.nan if r[1].get(k) is None else float(r[1][k]) for k in keys] for r in rows], dtype=np.float64
    ).reshape(len(rows), len(keys))
    means, sds = [], []
    for j in range(len(keys)):
        col = values[counted, j][~np.isnan(values[counted, j])]
        means.append(float(np.mean(col)) if len(col) else math.nan)
        sds.append(float(np.std(col, ddof=1)) if len(col) >= 2 else math.nan)
    return MetricTable(
        keys=keys,
        row_labels=tuple(r[0] for r in rows),
        values=tuple(tuple(float(v) for v in r) for r in values),
        mean=tuple(means),
        sd=tuple(sds),
        counted=tuple(bool(c) for c in counted),
    )


def metric_text_table(table: MetricTable, *, key: str, label: str, title: str, caption: str,
                      first: str) -> TextTable:
    """``table`` as a :class:`TextTable`: one row per seed or fold, a "Mean ± sd" footer row.

    The footer puts the standard deviation under the mean (one narrow column
    each in LaTeX, ``0.812 ± 0.034`` in Markdown).
    """
    headers = dict(METRIC_COLUMNS)
    rows = tuple((lab,) + tuple(table.cell(i, j) for j in range(len(table.keys)))
                 for i, lab in enumerate(table.row_labels))
    footer = (("Mean\n\u00b1 sd",) + tuple(table.summary(j, pm="\n\u00b1 ") for j in range(len(table.keys))),)
    return TextTable(key=key, label=label, title=title, caption=caption,
                     headers=(first,) + tuple(headers[k] for k in table.keys), rows=rows, footer=footer)


#: caption sentence for tables with a run's own stored metrics beside the recomputed ones
STORED_ROWS_NOTE = ("Rows marked (stored) give the metrics a run recorded itself where they read differently; "
                    "they are not in the mean. ")


def _stored_note(table: MetricTable) -> str:
    return STORED_ROWS_NOTE if table.counted and not all(table.counted) else ""


def seed_text_table(table: MetricTable) -> TextTable:
    """The per-seed validation metrics of a report (label ``tab:density-seeds``)."""
    return metric_text_table(
        table, key="seeds", label="tab:density-seeds", title="Validation metrics per training seed",
        caption=("Validation metrics per training seed, recomputed from each checkpoint when this section was "
                 "generated. Last row: mean \u00b1 sample standard deviation over seeds. " + _stored_note(table)
                 + METRIC_LEGEND),
        first="Seed",
    )


def cv_text_table(table: MetricTable, *, cv_id: str, k: int, seed: int | None, label: str,
                  description: str = "") -> TextTable:
    """The per-fold validation metrics of one cross-validation run.

    ``description`` says where the numbers come from (default: every fold
    recomputed from its checkpoint), e.g. for a run of the earlier project
    whose folds kept no weights or stored wrong numbers.
    """
    what = f"{k}-fold cross-validation {cv_id}" + (f" (seed {seed})" if seed is not None else "")
    description = description or ("validation metrics per fold, recomputed from each fold's checkpoint. Last row: "
                                  "mean \u00b1 sample standard deviation over folds.")
    return metric_text_table(
        table, key=label.split(":", 1)[-1], label=label, title=what[0].upper() + what[1:],
        caption=f"{what[0].upper() + what[1:]}: {description} " + _stored_note(table) + METRIC_LEGEND,
        first="Fold",
    )
