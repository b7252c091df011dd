"""Clinical pattern summary: does attention follow dense tissue and widen with density?

Breast density is the share of fibroglandular (dense) tissue in the breast. A
density model that looks at the right thing should

* put more of its attention on dense tissue than the dense area's share of the
  breast (a uniform map inside the breast would put exactly that share there):
  :func:`pattern_metrics` measures both and their difference, the *margin*;
* attend to a wider part of the breast as density rises from class 1 (A) to
  class 4 (D): the share of breast pixels whose normalised attention is at
  least 0.5 should grow with the class (:func:`attention_trend`).

The dense-tissue mask is the phantom's known mask (its ``roi_path``) or, for
real images without one, an estimate: breast pixels brighter than Otsu's
threshold of the breast's intensities, the pectoral muscle of MLO views left
out (:func:`estimate_dense_tissue`): it is as bright as dense tissue, and
BI-RADS density is judged without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from mammography.analysis.localisation import ATTENTION_THRESHOLD, summarise_by_class, threshold_batch
from mammography.analysis.maps import area_fractions, check_region, mass_shares, normalise_batch
from mammography.io.mask import otsu_threshold

__all__ = [
    "PATTERN_METRICS",
    "PatternResult",
    "estimate_dense_tissue",
    "pattern_metrics",
    "pattern_batch",
    "attention_trend",
    "summarise_patterns",
]

#: per-image columns summarised per class
PATTERN_METRICS = ("dense_mass_share", "dense_area_share", "dense_margin", "attended_breast_share")


@dataclass(frozen=True)
class PatternResult:
    """Attention and dense tissue in one image (NaN where undefined).

    Attributes
    ----------
    dense_mass_share : share of the heatmap mass inside the breast that lies
        on dense tissue.
    dense_area_share : dense area over breast area (what a uniform map gets).
    dense_margin : ``dense_mass_share - dense_area_share``; positive when
        attention concentrates on dense tissue.
    attended_breast_share : share of breast pixels with normalised attention
        at or above the threshold (0.5).
    """

    dense_mass_share: float
    dense_area_share: float
    dense_margin: float
    attended_breast_share: float

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_dense_tissue(pixels: np.ndarray, breast: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Estimate the dense-tissue mask of an image without one: breast pixels above Otsu's threshold.

    Parameters
    ----------
    pixels : float (H, W), dense = bright.
    breast : bool (H, W) breast mask.
    exclude : bool (H, W) part of the breast that is no breast tissue (the
        pectoral muscle, :func:`mammography.io.pectoral_mask`): left out of
        the threshold and of the result.

    Returns
    -------
    bool (H, W), inside ``breast`` and outside ``exclude``.
    """
    p = np.asarray(pixels, dtype=np.float64)
    b = check_region(breast, p.shape, "breast mask")
    if exclude is not None:
        b = b & ~check_region(exclude, p.shape, "excluded region")
    values = p[b]
    threshold = otsu_threshold(values) if values.size >= 2 else None
    if threshold is None:
        return np.zeros(p.shape, dtype=bool)
    return b & (p > threshold)


def pattern_metrics(
    heatmap: np.ndarray, breast: np.ndarray, dense: np.ndarray, threshold: float = ATTENTION_THRESHOLD
) -> PatternResult:
    """Dense-tissue attention and attended breast share of one heatmap.

    Parameters
    ----------
    heatmap : (H, W) map, normalised here.
    breast : bool (H, W) breast mask.
    dense : bool (H, W) dense-tissue mask (restricted to the breast here).
    threshold : normalised attention counted as "attended".
    """
    b = check_region(breast, np.shape(heatmap), "breast mask")
    d = check_region(dense, np.shape(heatmap), "dense-tissue mask")
    h = normalise_batch(torch.as_tensor(np.asarray(heatmap, dtype=np.float64))[None])
    values = pattern_batch(h, torch.from_numpy(b)[None], torch.from_numpy(d)[None], threshold)
    return PatternResult(**{k: float(v[0]) for k, v in values.items()})


def pattern_batch(
    h: torch.Tensor, breast: torch.Tensor, dense: torch.Tensor, threshold: float = ATTENTION_THRESHOLD
) -> dict[str, torch.Tensor]:
    """:func:`pattern_metrics` of a batch of *normalised* maps (B, H, W), on their device.

    Returns
    -------
    dict of float64 (B,) tensors named like the fields of :class:`PatternResult`.
    """
    d = dense & breast
    mass = mass_shares(h, d, within=breast)
    area = area_fractions(d, within=breast)
    attended = area_fractions(threshold_batch(h, threshold), within=breast)
    return {"dense_mass_share": mass, "dense_area_share": area, "dense_margin": mass - area,
            "attended_breast_share": attended}


def attention_trend(table: pd.DataFrame, column: str = "attended_breast_share", class_column: str = "y_true") -> dict:
    """Does ``column`` grow with the density class?

    Returns
    -------
    dict: ``class_means`` (class -> mean), ``spearman_rho`` and
    ``spearman_p`` (per image, class vs value), ``monotonic`` (class means
    never decrease), ``widens`` (rho > 0 with p < 0.05 and the highest class's
    mean above the lowest's) and ``statement`` (one sentence for the report).
    """
    t = table[[class_column, column]].dropna()
    means = {int(k): float(v) for k, v in t.groupby(class_column)[column].mean().sort_index().items()}
    rho = p = math.nan
    if t[class_column].nunique() >= 2 and t[column].nunique() >= 2:
        res = stats.spearmanr(t[class_column].to_numpy(), t[column].to_numpy())
        rho, p = float(res.statistic), float(res.pvalue)
    values = list(means.values())
    monotonic = bool(len(values) >= 2 and all(b >= a for a, b in zip(values, values[1:])))
    widens = bool(np.isfinite(rho) and rho > 0 and p < 0.05 and values[-1] > values[0])
    if len(means) >= 2:
        lo, hi = min(means), max(means)
        p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
        verdict = "widens" if widens else "does not clearly widen"
        statement = (
            f"Attention {verdict} from class {lo} to class {hi}: the share of the breast above "
            f"{ATTENTION_THRESHOLD:.1f} attention goes from {100 * means[lo]:.0f} % to {100 * means[hi]:.0f} % "
            f"(Spearman rho = {rho:.2f}, {p_text})."
        )
    else:
        statement = "Too few density classes among the images to judge whether attention widens with density."
    return {
        "class_means": {str(k): v for k, v in means.items()},
        "spearman_rho": rho,
        "spearman_p": p,
        "monotonic": monotonic,
        "widens": widens,
        "statement": statement,
    }


def summarise_patterns(table: pd.DataFrame, class_column: str = "y_true", seed: int = 0) -> dict:
    """Per-class means (95 % bootstrap CIs) of :data:`PATTERN_METRICS` and the widening trend.

    Returns
    -------
    dict: ``by_class`` (records of :func:`summarise_by_class`), ``trend``
    (:func:`attention_trend`), ``dense_margin`` (overall ``{mean, low, high,
    n}``).
    """
    by_class = summarise_by_class(table, PATTERN_METRICS, class_column, seed=seed)
    overall = by_class.iloc[0]
    return {
        "by_class": by_class.to_dict(orient="records"),
        "trend": attention_trend(table, class_column=class_column),
        "dense_margin": {
            "mean": float(overall["dense_margin_mean"]),
            "low": float(overall["dense_margin_low"]),
            "high": float(overall["dense_margin_high"]),
            "n": int(overall["dense_margin_n"]),
        },
    }
