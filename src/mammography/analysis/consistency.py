"""Cross-seed consistency: do models trained with different seeds look at the same tissue?

For every validation image shared by two or more runs (seeds 42, 43, 44 by
convention) this module records each run's prediction and confidence, whether
the predictions agree, and how similar the heatmaps are for every pair of
runs:

* **rank correlation**: Spearman's rho between the two maps' pixel values
  (inside the breast when a breast mask is given, so the empty background
  does not inflate it), ranks averaged over ties as :func:`scipy.stats.spearmanr` does;
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
:mod:`mammography.analysis.maps`). :func:`rank_correlations` and
:func:`top_region_ious` compare every pair of runs of a whole batch of images
at once on the maps' device; the per-image functions are those batches of one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from mammography.analysis.maps import TOP_FRACTION, bootstrap_mean_ci, check_region, normalise_batch
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
    "rank_correlations",
    "top_region_iou",
    "top_region_ious",
    "pair_similarities",
    "image_consistency",
    "consistency_record",
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


def _pair(a: np.ndarray, b: np.ndarray, within: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Two maps as a (1, 2, H, W) float64 stack (and the within-mask as (1, H, W)), shapes checked."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(f"maps of shapes {a.shape} and {b.shape} cannot be compared; resample them to one grid")
    w = None if within is None else torch.from_numpy(check_region(within, a.shape, "within-mask"))[None]
    return torch.from_numpy(np.stack([a, b]))[None], w


def rank_correlation(a: np.ndarray, b: np.ndarray, within: np.ndarray | None = None) -> float:
    """Spearman's rank correlation of two maps' pixel values (NaN when either is constant).

    Parameters
    ----------
    a, b : (H, W) maps of the same shape.
    within : optional bool (H, W); only these pixels are compared.
    """
    stacked, w = _pair(a, b, within)
    return float(rank_correlations(stacked, w)[0, 0])


def top_region_iou(
    a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION, within: np.ndarray | None = None
) -> float:
    """IoU of the top-``fraction`` regions of two maps (NaN when both are empty)."""
    stacked, w = _pair(a, b, within)
    return float(top_region_ious(stacked, fraction, w)[0, 0])


def _pairs_of(n_runs: int) -> tuple[list[int], list[int]]:
    """First and second members of every pair of runs, in :func:`itertools.combinations` order."""
    pairs = list(itertools.combinations(range(n_runs), 2))
    return [a for a, _ in pairs], [b for _, b in pairs]


def _flat(values: torch.Tensor, within: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R, P) float64 values and (B, 1, P) bool mask of (B, R, H, W) maps and (B, H, W) or no mask."""
    x = torch.as_tensor(values).to(torch.float64)
    if x.ndim != 4:
        raise ConfigError(f"expected (images, runs, H, W) maps, got shape {tuple(x.shape)}")
    if within is None:
        w = torch.ones((x.shape[0], x.shape[2] * x.shape[3]), dtype=torch.bool, device=x.device)
    else:
        if tuple(within.shape) != (x.shape[0], *x.shape[2:]):
            raise ConfigError(f"within-mask of shape {tuple(within.shape)} does not match maps of shape {tuple(x.shape)}")
        w = within.to(x.device).flatten(1)
    return x.flatten(2), w[:, None, :]


def _sorted(x: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's values inside its mask in ascending order, the rest (and non-finite values) +inf after
    them; and where each sorted value came from."""
    keyed = torch.where(inside & torch.isfinite(x), x, torch.full_like(x, math.inf))
    return keyed.sort(dim=-1)


def _ranks(ordered: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """1-based ranks of the values, averaged over ties (:func:`scipy.stats.rankdata`'s ``"average"``), from
    :func:`_sorted`: a run of equal values at sorted positions s..e gets (s + e + 2) / 2."""
    size = ordered.shape[-1]
    position = torch.arange(size, device=ordered.device)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, position, 0).cummax(dim=-1).values
    last = torch.where(ends, position, size - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    average = (first + last + 2).to(torch.float64) / 2.0
    return torch.empty_like(average).scatter_(-1, order, average)


def _rho(x: torch.Tensor, inside: torch.Tensor, ordered: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of every pair of runs from the sorted values (see :func:`rank_correlations`)."""
    n = inside.sum(-1).to(torch.float64)  # (B, 1)
    finite = (torch.isfinite(x) | ~inside).all(-1)
    ranks = _ranks(ordered, order)
    centred = torch.where(inside, ranks - (n[..., None] + 1.0) / 2.0, torch.zeros_like(ranks))
    spread = (centred * centred).sum(-1)
    first, second = _pairs_of(x.shape[1])
    out = []
    for a, b in zip(first, second):
        cov = (centred[:, a] * centred[:, b]).sum(-1)
        rho = (cov / torch.sqrt(spread[:, a] * spread[:, b])).clamp(-1.0, 1.0)
        undefined = (n[:, 0] < 3) | (spread[:, a] == 0) | (spread[:, b] == 0) | ~finite[:, a] | ~finite[:, b]
        out.append(torch.where(undefined, torch.full_like(rho, math.nan), rho))
    return torch.stack(out, dim=1) if out else x.new_zeros((x.shape[0], 0))


def _top_iou(t: torch.Tensor, inside: torch.Tensor, ordered: torch.Tensor, fraction: float) -> torch.Tensor:
    """Top-region IoU of every pair of runs of normalised maps from their sorted values (see :func:`top_region_ious`)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"top-region fraction must be in (0, 1], got {fraction}")
    n = inside.sum(-1)  # (B, 1)
    # the ceil(fraction * n)-th largest value inside is the threshold; ties at it are all in
    k = torch.ceil(fraction * n.to(torch.float64)).to(torch.int64).clamp_min(1)
    at = (n - k).clamp_min(0)[..., None].expand(-1, t.shape[1], 1)
    threshold = ordered.gather(-1, at)
    top = (t >= threshold) & (t > 0) & inside
    first, second = _pairs_of(t.shape[1])
    out = []
    for a, b in zip(first, second):
        inter = (top[:, a] & top[:, b]).sum(-1).to(torch.float64)
        union = (top[:, a] | top[:, b]).sum(-1).to(torch.float64)
        out.append(torch.where(union > 0, inter / union, torch.full_like(union, math.nan)))
    return torch.stack(out, dim=1) if out else t.new_zeros((t.shape[0], 0))


def _normalised(values: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(values)
    if x.ndim != 4:
        raise ConfigError(f"expected (images, runs, H, W) maps, got shape {tuple(x.shape)}")
    return normalise_batch(x.reshape(-1, *x.shape[2:])).reshape(x.shape)


def rank_correlations(values: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman's rho of every pair of runs' maps of every image, batched on the maps' device.

    Ranks are averaged over ties (as :func:`scipy.stats.spearmanr` does) and
    rho is Pearson's correlation of the ranks of the pixels inside ``within``.

    Parameters
    ----------
    values : (B, R, H, W) maps of R runs for B images (any real values).
    within : bool (B, H, W): the pixels compared for each image (all when None).

    Returns
    -------
    float64 (B, R (R - 1) / 2), pairs in :func:`itertools.combinations` order;
    NaN where fewer than 3 pixels are compared or a map is constant (or not
    finite) there.
    """
    x, inside = _flat(values, within)
    return _rho(x, inside, *_sorted(x, inside))


def top_region_ious(values: torch.Tensor, fraction: float = TOP_FRACTION, within: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of the top-``fraction`` regions (:func:`~mammography.analysis.maps.top_fraction_mask`) of every pair
    of runs' maps of every image, batched on the maps' device.

    Parameters
    ----------
    values : (B, R, H, W) maps (normalised here).
    fraction : size of a top region, as a fraction of the pixels compared.
    within : bool (B, H, W) pixels compared (all when None).

    Returns
    -------
    float64 (B, R (R - 1) / 2), pairs in :func:`itertools.combinations` order; NaN when both regions are empty.
    """
    t, inside = _flat(_normalised(values), within)
    return _top_iou(t, inside, _sorted(t, inside)[0], fraction)


def pair_similarities(values: torch.Tensor, fraction: float = TOP_FRACTION, within: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_correlations` and :func:`top_region_ious` of the *normalised* maps (one sort serves both).

    Parameters and returns as theirs; ``values`` are normalised here (the
    correlation of normalised maps: clipping at 0 ties the negative values).
    """
    t, inside = _flat(_normalised(values), within)
    ordered, order = _sorted(t, inside)
    return _rho(t, inside, ordered, order), _top_iou(t, inside, ordered, fraction)


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
    arrays = [np.asarray(maps[r], dtype=np.float64) for r in runs]
    for other in arrays[1:]:
        if other.shape != arrays[0].shape or other.ndim != 2:
            raise ConfigError(f"maps of shapes {arrays[0].shape} and {other.shape} cannot be compared; resample them "
                              "to one grid")
    w = None if within is None else torch.from_numpy(check_region(within, arrays[0].shape, "within-mask"))[None]
    rhos, ious = pair_similarities(torch.from_numpy(np.stack(arrays))[None], thresholds.top_fraction, w)
    return consistency_record(image_path, runs, rhos[0].tolist(), ious[0].tolist(), predictions, confidences,
                              artefact_flags=artefact_flags, thresholds=thresholds, y_true=y_true)


def consistency_record(
    image_path: str,
    runs: Sequence[str],
    rhos: Sequence[float],
    top_ious: Sequence[float],
    predictions: Mapping[str, int],
    confidences: Mapping[str, float],
    *,
    artefact_flags: Mapping[str, bool] | None = None,
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    y_true: int | None = None,
) -> ImageConsistency:
    """The :class:`ImageConsistency` of one image from its pairs' similarities (module docstring's rules).

    ``rhos`` (rank correlations) and ``top_ious`` hold one value per pair of
    ``runs`` in :func:`itertools.combinations` order (:func:`rank_correlations`,
    :func:`top_region_ious`); the other parameters are those of :func:`image_consistency`.
    """
    runs = tuple(runs)
    missing = [r for r in runs if r not in predictions or r not in confidences]
    if missing:
        raise ConfigError(f"no prediction or confidence for runs {missing} on {image_path}")
    pairs = tuple(
        PairSimilarity(a, b, float(rho), float(iou))
        for (a, b), rho, iou in zip(itertools.combinations(runs, 2), rhos, top_ious, strict=True)
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
