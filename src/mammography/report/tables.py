"""Metric tables: one row per seed or fold, and a mean ± standard deviation row.

The same :class:`MetricTable` feeds the LaTeX and the Markdown templates, so
the article and the Markdown never disagree on a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METRIC_COLUMNS", "MetricTable", "metric_table", "format_value", "format_percent"]

#: (metrics key, LaTeX header, Markdown header), in table order
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("acc", "Accuracy", "Accuracy"),
    ("kappa_quadratic", r"$\kappa_{\mathrm{quad}}$", "Quadratic κ"),
    ("macro_f1", "Macro-F1", "Macro-F1"),
    ("auc_ovr", "AUC", "AUC (one-vs-rest)"),
    ("bal_acc_adj", "Bal.\\ acc.\\ (adj.)", "Balanced acc. (adjusted)"),
)

_MISSING = "\u2014"  # em dash


def format_value(value: float | None, digits: int = 3) -> str:
    """``0.8123 -> "0.812"``; None, NaN or infinite -> an em dash; a value that rounds to zero has no sign."""
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_percent(value: float | None) -> str:
    """``0.825 -> "82 %"`` (whole percent); None, NaN or infinite -> an em dash."""
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    return f"{100 * float(value):.0f} %"


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
    keys = tuple(keys or (k for k, _, _ in METRIC_COLUMNS))
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
