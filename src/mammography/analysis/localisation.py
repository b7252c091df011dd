"""Localisation against expert regions: IoU, Dice, pointing game, energy-based pointing.

A region of interest (ROI) is a binary mask an expert drew (for the phantoms:
the dense-tissue mask the generator knows). All functions take a heatmap and
an ROI of the same shape, on the analysis grid (see
:mod:`mammography.analysis.maps`).

* **IoU / Dice** compare the *thresholded* heatmap (normalised value >=
  ``threshold``, default 0.5) with the ROI.
* **Pointing game**: a hit when the heatmap's maximum lies inside the ROI
  (grown by ``tolerance`` pixels). When several pixels share the maximum
  (flat tops of upsampled maps), it is a hit when at least half of them are
  inside.
* **Energy-based pointing** (Score-CAM's "energy"): the share of the
  heatmap's mass that falls inside the ROI.

Per-class and overall means carry 95 % percentile-bootstrap confidence
intervals (:func:`summarise_localisation`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from mammography.analysis.maps import (
    area_fractions,
    bootstrap_mean_ci,
    check_region,
    mass_share,
    mass_shares,
    normalise_batch,
    normalise_map,
)
from mammography.errors import ConfigError

__all__ = [
    "ATTENTION_THRESHOLD",
    "LOCALISATION_METRICS",
    "LocalisationResult",
    "threshold_map",
    "iou",
    "dice",
    "pointing_game",
    "energy_pointing",
    "localisation_metrics",
    "localisation_batch",
    "threshold_batch",
    "summarise_by_class",
    "summarise_localisation",
]

#: normalised attention at or above which a pixel counts as "attended"
ATTENTION_THRESHOLD = 0.5
#: per-image columns summarised by :func:`summarise_localisation`
LOCALISATION_METRICS = ("iou", "dice", "pointing_hit", "energy_pointing")


@dataclass(frozen=True)
class LocalisationResult:
    """Localisation of one heatmap against one ROI.

    Attributes
    ----------
    iou, dice : float, overlap of the thresholded map with the ROI (NaN when
        both are empty).
    pointing_hit : float, 1.0 hit / 0.0 miss (NaN when the map is all zero or
        the ROI is empty).
    energy_pointing : float, share of heatmap mass inside the ROI (NaN when the
        map has no mass).
    roi_area_share : float, ROI area over the image area: the energy share a
        uniform map would get.
    """

    iou: float
    dice: float
    pointing_hit: float
    energy_pointing: float
    roi_area_share: float

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_map(heatmap: np.ndarray, threshold: float = ATTENTION_THRESHOLD) -> np.ndarray:
    """Pixels whose normalised attention is at least ``threshold`` (bool (H, W)).

    A map without positive values has no attended pixel.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"attention threshold must be in (0, 1], got {threshold}")
    h = normalise_map(heatmap)
    return (h >= threshold) & (h > 0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; NaN when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = check_region(b, a.shape, "second mask")
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else math.nan


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks; NaN when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = check_region(b, a.shape, "second mask")
    total = int(a.sum() + b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else math.nan


def pointing_game(heatmap: np.ndarray, roi: np.ndarray, tolerance: int = 0) -> float:
    """1.0 when the heatmap's maximum falls inside ``roi`` (grown by ``tolerance`` px), else 0.0.

    Ties at the maximum count as a hit when at least half of the tied pixels
    are inside. Returns NaN when the map has no positive value or the ROI is
    empty (the game is undefined, not lost).
    """
    if tolerance < 0:
        raise ConfigError(f"pointing-game tolerance must be >= 0 pixels, got {tolerance}")
    h = normalise_map(heatmap)
    r = check_region(roi, h.shape, "ROI")
    if not r.any() or h.max(initial=0.0) <= 0:
        return math.nan
    if tolerance:
        r = ndimage.binary_dilation(r, structure=ndimage.generate_binary_structure(2, 1), iterations=tolerance)
    peak = h >= h.max() - 1e-12
    return 1.0 if r[peak].mean() >= 0.5 else 0.0


def energy_pointing(heatmap: np.ndarray, roi: np.ndarray) -> float:
    """Share of the heatmap's mass inside ``roi`` (NaN when the map has no mass)."""
    return mass_share(heatmap, roi)


def localisation_metrics(
    heatmap: np.ndarray, roi: np.ndarray, threshold: float = ATTENTION_THRESHOLD, tolerance: int = 0
) -> LocalisationResult:
    """All localisation metrics of one heatmap against one ROI (same shape)."""
    r = check_region(roi, np.shape(heatmap), "ROI")
    if tolerance < 0:
        raise ConfigError(f"pointing-game tolerance must be >= 0 pixels, got {tolerance}")
    h = normalise_batch(torch.as_tensor(np.asarray(heatmap, dtype=np.float64))[None])
    values = localisation_batch(h, torch.from_numpy(r)[None], threshold, tolerance)
    return LocalisationResult(**{k: float(v[0]) for k, v in values.items()})


def threshold_batch(h: torch.Tensor, threshold: float = ATTENTION_THRESHOLD) -> torch.Tensor:
    """:func:`threshold_map` of a batch of *normalised* maps (B, H, W): bool, on their device."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"attention threshold must be in (0, 1], got {threshold}")
    return (h >= threshold) & (h > 0)


def _grow(mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` dilations of (B, H, W) masks by the 4-neighbour cross (``ndimage.binary_dilation`` of
    :func:`pointing_game`, zeros beyond the border)."""
    for _ in range(steps):
        p = torch.nn.functional.pad(mask, (1, 1, 1, 1))
        mask = mask | p[..., :-2, 1:-1] | p[..., 2:, 1:-1] | p[..., 1:-1, :-2] | p[..., 1:-1, 2:]
    return mask


def localisation_batch(
    h: torch.Tensor, roi: torch.Tensor, threshold: float = ATTENTION_THRESHOLD, tolerance: int = 0
) -> dict[str, torch.Tensor]:
    """:func:`localisation_metrics` of a batch of *normalised* maps, on their device.

    Parameters
    ----------
    h : float64 (B, H, W) normalised maps.
    roi : bool (B, H, W) expert regions.
    threshold, tolerance : as for :func:`localisation_metrics`.

    Returns
    -------
    dict of float64 (B,) tensors named like the fields of :class:`LocalisationResult`.
    """
    nan = torch.full(h.shape[:-2], math.nan, dtype=torch.float64, device=h.device)
    attended = threshold_batch(h, threshold)
    inter = (attended & roi).flatten(1).sum(1).to(torch.float64)
    union = (attended | roi).flatten(1).sum(1).to(torch.float64)
    total = (attended.flatten(1).sum(1) + roi.flatten(1).sum(1)).to(torch.float64)
    peak_value = h.flatten(1).amax(1)
    peak = h >= (peak_value - 1e-12)[:, None, None]
    grown = _grow(roi, tolerance)
    hits = (peak & grown).flatten(1).sum(1).to(torch.float64) / peak.flatten(1).sum(1).to(torch.float64)
    undefined = ~roi.flatten(1).any(1) | (peak_value <= 0)
    return {
        "iou": torch.where(union > 0, inter / union, nan),
        "dice": torch.where(total > 0, 2.0 * inter / total, nan),
        "pointing_hit": torch.where(undefined, nan, (hits >= 0.5).to(torch.float64)),
        "energy_pointing": mass_shares(h, roi),
        "roi_area_share": area_fractions(roi),
    }


def summarise_by_class(
    table: pd.DataFrame,
    metrics,
    class_column: str = "y_true",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Means with bootstrap CIs of per-image ``metrics``, overall and per class.

    Parameters
    ----------
    table : one row per image with the metric columns and ``class_column``.
    metrics : names of the columns to summarise.
    class_column : the grouping column (density class 1..4).

    Returns
    -------
    DataFrame with one row per group (``"all"`` first, then each class in
    order) and columns ``group, n_images`` and ``{metric}_mean``,
    ``{metric}_low``, ``{metric}_high``, ``{metric}_n`` for every metric.
    """
    missing = [m for m in [*metrics, class_column] if m not in table.columns]
    if missing:
        raise ConfigError(f"per-image table lacks the columns {missing}")
    groups = [("all", table)]
    groups += [(str(int(k)), g) for k, g in sorted(table.groupby(class_column), key=lambda kv: kv[0])]
    rows = []
    for name, g in groups:
        row = {"group": name, "n_images": int(len(g))}
        for m in metrics:
            ci = bootstrap_mean_ci(g[m].to_numpy(dtype=float), confidence, n_resamples, seed)
            row.update({f"{m}_mean": ci.mean, f"{m}_low": ci.low, f"{m}_high": ci.high, f"{m}_n": ci.n})
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_localisation(
    table: pd.DataFrame, class_column: str = "y_true", confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """:func:`summarise_by_class` of IoU, Dice, pointing game and energy pointing."""
    return summarise_by_class(table, LOCALISATION_METRICS, class_column, confidence, seed=seed)
