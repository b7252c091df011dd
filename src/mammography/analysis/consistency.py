"""Cross-seed consistency: do models trained with different seeds look at the same tissue?

For every validation image shared by two or more runs (seeds 42, 43, 44 by
convention) this module records each run's prediction and confidence, whether
the predictions agree, and how similar the heatmaps are for every pair of
runs:

* **rank correlation**: Spearman's rho between the two maps' pixel values
  (inside the breast when a breast mask is given, so the empty background
  does not inflate it);
* **top-region IoU**: intersection over union of the two maps' most-attended
  20 % of pixels (:func:`~mammography.analysis.maps.top_fraction_mask`; two
  independent random regions of 20 % overlap with IoU about 0.11).

An image is **high agreement** unless at least one reason applies, in which
case it is **low agreement - requires review**:

* *predictions differ*: not every run predicts the same class;
* *attention in different regions*: the least similar pair has rank
  correlation below ``min_rank_correlation`` or top-region IoU below
  ``min_top_iou`` (an undefined correlation, e.g. of an all-zero map, counts
  as below);
* *attention on an artefact*: at least one run puts spurious attention on a
  burned-in marker or the image border (its flag from
  :mod:`mammography.analysis.spurious`).

Maps must already be on one common grid (see
:mod:`mammography.analysis.maps`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mammography.analysis.maps import TOP_FRACTION, bootstrap_mean_ci, check_region, normalise_map, top_fraction_mask
from mammography.errors import ConfigError

__all__ = [
    "HIGH_AGREEMENT",
    "LOW_AGREEMENT",
    "REASON_PREDICTIONS",
    "REASON_REGIONS",
    "REASON_ARTEFACT",
    "ConsistencyThresholds",
    "PairSimilarity",
    "ImageConsistency",
    "rank_correlation",
    "top_region_iou",
    "image_consistency",
    "consistency_table",
    "summarise_consistency",
    "select_extremes",
]

HIGH_AGREEMENT = "high agreement"
LOW_AGREEMENT = "low agreement - requires review"
REASON_PREDICTIONS = "predictions differ"
REASON_REGIONS = "attention in different regions"
REASON_ARTEFACT = "attention on an artefact"


@dataclass(frozen=True)
class ConsistencyThresholds:
    """When two maps count as "attention in the same regions".

    Attributes
    ----------
    min_rank_correlation : float, default 0.5
        Spearman's rho every pair of maps must reach (0.5 is the usual
        "moderate to strong" boundary).
    min_top_iou : float, default 0.3
        IoU every pair's top regions must reach: about three times the 0.11
        that two independent random regions of 20 % get.
    top_fraction : float, default 0.2
        Size of a map's top region, as a fraction of the pixels compared.
    """

    min_rank_correlation: float = 0.5
    min_top_iou: float = 0.3
    top_fraction: float = TOP_FRACTION

    def __post_init__(self):
        if not -1.0 <= self.min_rank_correlation <= 1.0:
            raise ConfigError(f"min_rank_correlation must be in [-1, 1], got {self.min_rank_correlation}")
        if not 0.0 <= self.min_top_iou <= 1.0:
            raise ConfigError(f"min_top_iou must be in [0, 1], got {self.min_top_iou}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairSimilarity:
    """Similarity of two runs' maps of one image."""

    run_a: str
    run_b: str
    rank_correlation: float
    top_iou: float


@dataclass(frozen=True)
class ImageConsistency:
    """Agreement of several runs on one image.

    Attributes
    ----------
    image_path : str
    runs : tuple of run labels (e.g. seeds as text), in the order given.
    predictions : dict run -> predicted class 1..4.
    confidences : dict run -> probability of the predicted class.
    predictions_agree : bool
    pairs : tuple of :class:`PairSimilarity`, one per pair of runs.
    artefact_runs : tuple of runs flagged for attention on an artefact.
    reasons : tuple of reason texts (empty for high agreement).
    y_true : int or None, the ground truth when known.
    """

    image_path: str
    runs: tuple[str, ...]
    predictions: dict
    confidences: dict
    predictions_agree: bool
    pairs: tuple[PairSimilarity, ...]
    artefact_runs: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    y_true: int | None = None

    @property
    def agreement(self) -> str:
        """:data:`HIGH_AGREEMENT` or :data:`LOW_AGREEMENT`."""
        return LOW_AGREEMENT if self.reasons else HIGH_AGREEMENT

    def _values(self, name: str) -> np.ndarray:
        return np.array([getattr(p, name) for p in self.pairs], dtype=float)

    @property
    def mean_rank_correlation(self) -> float:
        return _nanmean(self._values("rank_correlation"))

    @property
    def min_rank_correlation(self) -> float:
        return _nanmin_strict(self._values("rank_correlation"))

    @property
    def mean_top_iou(self) -> float:
        return _nanmean(self._values("top_iou"))

    @property
    def min_top_iou(self) -> float:
        return _nanmin_strict(self._values("top_iou"))

    @property
    def score(self) -> float:
        """Attention similarity used to rank images: mean of the mean rank
        correlation (an undefined one counts as -1) and the mean top-region IoU,
        in [-0.5, 1]."""
        rho = self.mean_rank_correlation
        top = self.mean_top_iou
        return float(0.5 * ((rho if np.isfinite(rho) else -1.0) + (top if np.isfinite(top) else 0.0)))


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _nanmin_strict(v: np.ndarray) -> float:
    """Minimum, NaN as soon as one value is undefined (it cannot vouch for agreement)."""
    return float(v.min()) if v.size and np.all(np.isfinite(v)) else math.nan


def rank_correlation(a: np.ndarray, b: np.ndarray, within: np.ndarray | None = None) -> float:
    """Spearman's rank correlation of two maps' pixel values (NaN when either is constant).

    Parameters
    ----------
    a, b : (H, W) maps of the same shape.
    within : optional bool (H, W); only these pixels are compared.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"maps of shapes {a.shape} and {b.shape} cannot be compared; resample them to one grid")
    if within is not None:
        w = check_region(within, a.shape, "within-mask")
        a, b = a[w], b[w]
    else:
        a, b = a.ravel(), b.ravel()
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def top_region_iou(
    a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION, within: np.ndarray | None = None
) -> float:
    """IoU of the top-``fraction`` regions of two maps (NaN when both are empty)."""
    ta = top_fraction_mask(a, fraction, within)
    tb = top_fraction_mask(b, fraction, within)
    union = int((ta | tb).sum())
    return float((ta & tb).sum() / union) if union else math.nan


def image_consistency(
    image_path: str,
    maps: Mapping[str, np.ndarray],
    predictions: Mapping[str, int],
    confidences: Mapping[str, float],
    *,
    within: np.ndarray | None = None,
    artefact_flags: Mapping[str, bool] | None = None,
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    y_true: int | None = None,
) -> ImageConsistency:
    """Compare two or more runs' predictions and maps of one image.

    Parameters
    ----------
    image_path : the image (used as its identifier).
    maps : run label -> (H, W) heatmap, all on one grid.
    predictions : run label -> predicted class (1..4).
    confidences : run label -> probability of the predicted class.
    within : optional bool (H, W) breast mask; correlation and top regions
        are computed over these pixels only.
    artefact_flags : optional run label -> True when that run's attention on
        this image is flagged as spurious (marker or border).
    thresholds : :class:`ConsistencyThresholds`.
    y_true : ground-truth class, recorded when known.
    """
    runs = tuple(maps)
    if len(runs) < 2:
        raise ConfigError(f"cross-seed consistency needs at least two runs, got {len(runs)}")
    missing = [r for r in runs if r not in predictions or r not in confidences]
    if missing:
        raise ConfigError(f"no prediction or confidence for runs {missing} on {image_path}")
    normalised = {r: normalise_map(maps[r]) for r in runs}
    pairs = tuple(
        PairSimilarity(
            a,
            b,
            rank_correlation(normalised[a], normalised[b], within),
            top_region_iou(normalised[a], normalised[b], thresholds.top_fraction, within),
        )
        for a, b in itertools.combinations(runs, 2)
    )
    preds = {r: int(predictions[r]) for r in runs}
    agree = len(set(preds.values())) == 1
    artefact_runs = tuple(r for r in runs if artefact_flags and artefact_flags.get(r, False))
    reasons = []
    if not agree:
        reasons.append(REASON_PREDICTIONS)
    rho = np.array([p.rank_correlation for p in pairs], dtype=float)
    ious = np.array([p.top_iou for p in pairs], dtype=float)
    if (
        not np.all(np.isfinite(rho))
        or rho.min() < thresholds.min_rank_correlation
        or not np.all(np.isfinite(ious))
        or ious.min() < thresholds.min_top_iou
    ):
        reasons.append(REASON_REGIONS)
    if artefact_runs:
        reasons.append(REASON_ARTEFACT)
    return ImageConsistency(
        image_path=str(image_path),
        runs=runs,
        predictions=preds,
        confidences={r: float(confidences[r]) for r in runs},
        predictions_agree=agree,
        pairs=pairs,
        artefact_runs=artefact_runs,
        reasons=tuple(reasons),
        y_true=None if y_true is None else int(y_true),
    )


def consistency_table(records: Sequence[ImageConsistency]) -> pd.DataFrame:
    """One row per image: per-run prediction and confidence, similarities, class and reasons.

    Columns: ``image_path, y_true``, ``pred_{run}`` and ``conf_{run}`` per
    run, ``predictions_agree, mean_rank_correlation, min_rank_correlation,
    mean_top_iou, min_top_iou``, ``rho_{a}_{b}`` and ``iou_{a}_{b}`` per pair,
    ``artefact_runs`` (``;``-joined), ``score, agreement, reasons``
    (``;``-joined). Rows are sorted from the most to the least consistent:
    images whose predictions agree first, then by decreasing ``score``.
    """
    rows = []
    for rec in records:
        row = {"image_path": rec.image_path, "y_true": rec.y_true}
        for r in rec.runs:
            row[f"pred_{r}"] = rec.predictions[r]
            row[f"conf_{r}"] = rec.confidences[r]
        row.update(
            predictions_agree=rec.predictions_agree,
            mean_rank_correlation=rec.mean_rank_correlation,
            min_rank_correlation=rec.min_rank_correlation,
            mean_top_iou=rec.mean_top_iou,
            min_top_iou=rec.min_top_iou,
        )
        for p in rec.pairs:
            row[f"rho_{p.run_a}_{p.run_b}"] = p.rank_correlation
            row[f"iou_{p.run_a}_{p.run_b}"] = p.top_iou
        row.update(
            artefact_runs=";".join(rec.artefact_runs),
            score=rec.score,
            agreement=rec.agreement,
            reasons=";".join(rec.reasons),
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # images the runs disagree on rank below all others, then by attention similarity
    order = np.lexsort(
        (table["image_path"].to_numpy(), -table["score"].to_numpy(), ~table["predictions_agree"].to_numpy(dtype=bool))
    )
    return table.iloc[order].reset_index(drop=True)


def summarise_consistency(
    table: pd.DataFrame, thresholds: ConsistencyThresholds = ConsistencyThresholds(), seed: int = 0
) -> dict:
    """Summary of a :func:`consistency_table`.

    Returns
    -------
    dict: ``runs``, ``n_images``, ``n_high_agreement``, ``n_low_agreement``,
    ``high_agreement_rate``, ``prediction_agreement_rate``,
    ``mean_rank_correlation`` and ``mean_top_iou`` (each ``{mean, low, high,
    n}`` with a 95 % bootstrap CI over images), ``reasons`` (reason -> number
    of images), ``thresholds``.
    """
    runs = [c[len("pred_") :] for c in table.columns if c.startswith("pred_")]
    n = int(len(table))
    reasons = {REASON_PREDICTIONS: 0, REASON_REGIONS: 0, REASON_ARTEFACT: 0}
    for text in table.get("reasons", pd.Series(dtype=str)).fillna(""):
        for reason in filter(None, str(text).split(";")):
            reasons[reason] = reasons.get(reason, 0) + 1
    n_high = int((table["agreement"] == HIGH_AGREEMENT).sum()) if n else 0
    return {
        "runs": runs,
        "n_images": n,
        "n_high_agreement": n_high,
        "n_low_agreement": n - n_high,
        "high_agreement_rate": n_high / n if n else math.nan,
        "prediction_agreement_rate": float(table["predictions_agree"].mean()) if n else math.nan,
        "mean_rank_correlation": bootstrap_mean_ci(
            table["mean_rank_correlation"].to_numpy(dtype=float) if n else [], seed=seed
        ).to_dict(),
        "mean_top_iou": bootstrap_mean_ci(table["mean_top_iou"].to_numpy(dtype=float) if n else [], seed=seed).to_dict(),
        "reasons": reasons,
        "thresholds": thresholds.to_dict(),
    }


def select_extremes(table: pd.DataFrame, n: int = 3) -> tuple[list[str], list[str]]:
    """The ``n`` most consistent and ``n`` least consistent images of a consistency table.

    The most consistent are the high-agreement images with the highest
    score (then other images by score when fewer than ``n`` are high
    agreement); the least consistent are, among the others, the images with
    the most reasons for review, then the lowest score. An image is never in
    both lists.

    Returns
    -------
    (most, least): lists of ``image_path``.
    """
    if table.empty or n <= 0:
        return [], []
    t = table.assign(_n_reasons=table["reasons"].fillna("").map(lambda s: len([x for x in str(s).split(";") if x])))
    t["_high"] = t["agreement"] == HIGH_AGREEMENT
    best = t.sort_values(["_high", "predictions_agree", "score", "image_path"], ascending=[False, False, False, True])
    most = list(best["image_path"].head(n))
    rest = t[~t["image_path"].isin(most)]
    least_sorted = rest.sort_values(
        ["_n_reasons", "predictions_agree", "score", "image_path"], ascending=[False, True, True, True]
    )
    least = list(least_sorted["image_path"].head(n))
    return most, least
