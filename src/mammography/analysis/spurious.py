"""Spurious attention: heatmap mass outside the breast, on the image border, on burned-in markers.

A density model should look at breast tissue. Attention that lands outside
the breast, in a band along the image border (collimation edges, scanner
labels) or on burned-in text and markers is a warning sign that the model may
have learned a shortcut. This module measures, per image, the share of the
heatmap's mass (:func:`~mammography.analysis.maps.mass_share`) in three
regions, flags images whose share is too high (for the tiny marker regions:
whose share is too high *relative to the markers' area*) and flags runs with
too many flagged images (:class:`SpuriousThresholds`).

Burned-in markers are found in the pixels (:func:`detect_markers`): connected
groups of very bright pixels outside the breast mask that are small compared
with the image. When a manifest records an artefact's bounding box
(``artifact_bbox``) it is added to the detected regions, but detection never
needs it.

Every map and mask here is on one grid (see :mod:`mammography.analysis.maps`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from mammography.analysis.maps import check_region, area_share, bootstrap_mean_ci, mass_share
from mammography.errors import ConfigError

__all__ = [
    "BORDER_FRACTION",
    "SPURIOUS_KINDS",
    "SpuriousShares",
    "SpuriousThresholds",
    "border_band",
    "detect_markers",
    "bbox_mask",
    "parse_bbox",
    "spurious_shares",
    "image_flags",
    "summarise_spurious",
]

#: width of the border band, as a fraction of the image side it runs along
BORDER_FRACTION = 0.03
#: the regions measured, as named in column and key names
SPURIOUS_KINDS = ("outside_breast", "border", "marker")


@dataclass(frozen=True)
class SpuriousThresholds:
    """When attention counts as spurious, per image and per run.

    Outside the breast and in the border band the *share* of heatmap mass is
    compared with a threshold. Markers cover well under 1 % of an image, so
    there the share is compared with the marker's own area: the *enrichment*
    ``marker_share / marker_area`` is 1 for a uniform map and grows when
    attention concentrates on the marker.

    Defaults were set on phantom experiments (EfficientNet-B0 at 96-128 px,
    Grad-CAM at ``features.8``, 15 trained models): their mean shares were
    45-55 % outside the breast (a uniform map: about 56 %) and 7-9 % in the
    border band (uniform: 12 %); single images reached at most 0.76 outside
    the breast (0.88 for two barely trained models), 0.16 in the band, a
    marker enrichment of 1.9 and an occlusion drop of 0.09, so the
    models that learned the task were never flagged. Untrained networks were
    (their Grad-CAM follows bright edges: enrichments of 2-3.7 on the text
    markers), and so was a model that predicted class 4 from the shortcut
    square alone (occlusion drops of 0.87).

    Attributes
    ----------
    outside_breast : float, default 0.7
        An image is flagged when more than this share of its mass lies outside the breast.
    border : float, default 0.2
        ... in the border band (about twice what a uniform map puts there).
    marker_enrichment : float, default 3.0
        ... when its share on markers exceeds this many times the markers' area share,
    marker_dependence : float, default 0.25
        ... or when painting its markers with the background lowers the
        probability of the predicted class by more than this (the
        ``marker_occlusion_drop`` column, present when the model was
        available). A CAM can miss a marker the model relies on: at 128 px
        the last block of EfficientNet-B0 has 4 x 4 cells, and a model that
        predicted class 4 from a 2-pixel square alone still had its Grad-CAM
        maximum in the breast.
    max_flag_rate : float, default 0.1
        A run is flagged for a kind when more than this share of its images
        is flagged for it (a shortcut usually concerns one class only), or
        when its mean share (mean enrichment for markers) exceeds the
        per-image threshold.
    """

    outside_breast: float = 0.7
    border: float = 0.2
    marker_enrichment: float = 3.0
    marker_dependence: float = 0.25
    max_flag_rate: float = 0.1

    def __post_init__(self):
        for name in ("outside_breast", "border", "max_flag_rate", "marker_dependence"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"spurious-attention threshold {name}={value} must be in (0, 1]")
        if not 0 < self.marker_enrichment < float("inf"):
            raise ConfigError(f"marker enrichment threshold must be positive, got {self.marker_enrichment}")

    def to_dict(self) -> dict:
        return asdict(self)

    def value(self, kind: str) -> float:
        """The per-image threshold of ``kind`` (the enrichment threshold for markers)."""
        return self.marker_enrichment if kind == "marker" else getattr(self, kind)


@dataclass(frozen=True)
class SpuriousShares:
    """Where one heatmap's mass goes (shares in [0, 1], NaN for a map without mass).

    Attributes
    ----------
    outside_breast, border, marker : float
        Shares of mass outside the breast, in the border band, on markers.
    outside_breast_area, border_area, marker_area : float
        Area fractions of the same regions (the share of a uniform map).
    n_markers : int
        Marker regions found in the image.
    """

    outside_breast: float
    border: float
    marker: float
    outside_breast_area: float
    border_area: float
    marker_area: float
    n_markers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def border_band(shape: tuple[int, int], fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Bool mask of the pixels within ``fraction`` of the image side from an edge.

    The band is ``ceil(fraction * H)`` rows at the top and bottom and
    ``ceil(fraction * W)`` columns at the left and right.
    """
    if not 0.0 < fraction < 0.5:
        raise ConfigError(f"border fraction must be in (0, 0.5), got {fraction}")
    h, w = (int(v) for v in shape)
    br, bc = math.ceil(fraction * h), math.ceil(fraction * w)
    band = np.zeros((h, w), dtype=bool)
    band[:br] = band[h - br :] = True
    band[:, :bc] = band[:, w - bc :] = True
    return band


def parse_bbox(value) -> tuple[int, int, int, int] | None:
    """Read an ``artifact_bbox`` cell: ``(r0, c0, r1, c1)`` half-open, or None when empty.

    Accepts a sequence of four numbers, a JSON list (``"[10, 20, 40, 50]"``)
    or four numbers separated by commas, spaces or semicolons.
    """
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in {"nan", "none", "null"}:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            value = [v for v in re.split(r"[\s,;()\[\]]+", text) if v]
    try:
        numbers = [int(round(float(v))) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"artifact_bbox {value!r} is not four numbers (r0, c0, r1, c1)") from None
    if len(numbers) != 4:
        raise ConfigError(f"artifact_bbox {value!r} is not four numbers (r0, c0, r1, c1)")
    r0, c0, r1, c1 = numbers
    if r1 <= r0 or c1 <= c0:
        raise ConfigError(f"artifact_bbox {value!r} is empty; expected (r0, c0, r1, c1) with r1 > r0, c1 > c0")
    return (r0, c0, r1, c1)


def bbox_mask(shape: tuple[int, int], bbox: tuple[int, int, int, int]) -> np.ndarray:
    """Bool mask of a half-open box ``(r0, c0, r1, c1)`` clipped to ``shape``."""
    mask = np.zeros(tuple(int(v) for v in shape), dtype=bool)
    r0, c0, r1, c1 = bbox
    mask[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    return mask


def detect_markers(
    pixels: np.ndarray,
    breast: np.ndarray,
    *,
    min_contrast: float = 0.25,
    bright_fraction: float = 0.3,
    max_area_fraction: float = 0.02,
    merge_fraction: float = 0.01,
    min_pixels: int = 4,
) -> tuple[np.ndarray, int]:
    """Find burned-in markers and text: small, very bright groups of pixels outside the breast.

    Parameters
    ----------
    pixels : float (H, W) in [0, 1], dense = bright (as read by
        :func:`mammography.io.read_mammogram`).
    breast : bool (H, W) breast mask of the same image.
    min_contrast : images whose brightest pixel outside the breast is less
        than this above the background level (the median outside the breast)
        have no markers.
    bright_fraction : a pixel outside the breast (and at least 2 px away
        from it) is *bright* when it lies more than this fraction of the way
        from the background level to that brightest pixel. 0.3 keeps thin,
        antialiased text next to a saturated square.
    max_area_fraction : a group whose bounding box covers more than this
        fraction of the image is not a marker (e.g. a part of the breast the
        mask missed).
    merge_fraction : bright pixels closer than this fraction of the longer
        side are one group, so the letters of a word form one marker.
    min_pixels : smaller groups are noise.

    Returns
    -------
    (mask, count): bool (H, W) union of the bounding boxes of the markers
    (grown by the merge distance, so thin glyphs become a solid region the
    size of the text), and the number of markers.
    """
    p = np.asarray(pixels, dtype=np.float32)
    b = check_region(breast, p.shape, "breast mask")
    # two pixels of margin: the resampled skin line is not a marker
    outside = ~ndimage.binary_dilation(b, iterations=2) if b.any() else np.ones(p.shape, dtype=bool)
    if not outside.any():
        return np.zeros(p.shape, dtype=bool), 0
    values = p[outside]
    background, peak = float(np.median(values)), float(values.max())
    if peak - background < min_contrast:
        return np.zeros(p.shape, dtype=bool), 0
    bright = outside & (p > background + bright_fraction * (peak - background))
    merge = max(1, int(round(merge_fraction * max(p.shape))))
    grown = ndimage.binary_dilation(bright, structure=np.ones((3, 3), bool), iterations=merge)
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    mask = np.zeros(p.shape, dtype=bool)
    count = 0
    max_area = max_area_fraction * p.size
    counts = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1)) if n else []
    for k, box in enumerate(ndimage.find_objects(labels)):
        if box is None or counts[k] < min_pixels:
            continue
        rows, cols = box
        if (rows.stop - rows.start) * (cols.stop - cols.start) > max_area:
            continue
        mask[box] = True
        count += 1
    return mask, count


def spurious_shares(
    heatmap: np.ndarray,
    breast: np.ndarray,
    markers: np.ndarray | None = None,
    border_fraction: float = BORDER_FRACTION,
    n_markers: int | None = None,
) -> SpuriousShares:
    """Share of one heatmap's mass outside the breast, in the border band and on markers.

    Parameters
    ----------
    heatmap : (H, W) map, normalised here.
    breast : bool (H, W) breast mask.
    markers : bool (H, W) marker regions (:func:`detect_markers`, plus any
        known artefact box); None = no markers.
    border_fraction : width of the border band (:func:`border_band`).
    n_markers : number of marker regions, recorded as is (default: 1 if
        ``markers`` has any pixel else 0).
    """
    shape = np.shape(heatmap)
    outside = ~check_region(breast, shape, "breast mask")
    band = border_band(shape, border_fraction)
    m = np.zeros(shape, dtype=bool) if markers is None else check_region(markers, shape, "marker mask")
    return SpuriousShares(
        outside_breast=mass_share(heatmap, outside),
        border=mass_share(heatmap, band),
        marker=mass_share(heatmap, m) if m.any() else 0.0,
        outside_breast_area=area_share(outside),
        border_area=area_share(band),
        marker_area=area_share(m),
        n_markers=int(n_markers if n_markers is not None else m.any()),
    )


def _measure(table: pd.DataFrame, kind: str) -> np.ndarray:
    """The per-image quantity compared with the threshold: the share, or the enrichment for markers."""
    share = table[f"{kind}_share"].to_numpy(dtype=float)
    if kind != "marker":
        return share
    area = table[f"{kind}_area"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, share / area, np.nan)


def image_flags(table: pd.DataFrame, thresholds: SpuriousThresholds = SpuriousThresholds()) -> pd.DataFrame:
    """Per-image ``marker_enrichment``, booleans ``{kind}_flag`` and ``spurious_flag`` (any kind).

    ``table`` has the columns ``{kind}_share`` and ``{kind}_area`` for every
    kind in :data:`SPURIOUS_KINDS`, optionally ``marker_occlusion_drop``.
    Undefined values (no mass, no marker) are not flagged.
    """
    out = pd.DataFrame(index=table.index)
    out["marker_enrichment"] = _measure(table, "marker")
    for kind in SPURIOUS_KINDS:
        out[f"{kind}_flag"] = np.nan_to_num(_measure(table, kind), nan=-np.inf) > thresholds.value(kind)
    if "marker_occlusion_drop" in table.columns:
        drop = np.nan_to_num(table["marker_occlusion_drop"].to_numpy(dtype=float), nan=-np.inf)
        out["marker_flag"] |= drop > thresholds.marker_dependence
    out["spurious_flag"] = out[[f"{k}_flag" for k in SPURIOUS_KINDS]].any(axis=1)
    return out


def summarise_spurious(
    table: pd.DataFrame, thresholds: SpuriousThresholds = SpuriousThresholds(), seed: int = 0
) -> dict:
    """Run-level summary of spurious attention.

    Parameters
    ----------
    table : one row per image with ``{kind}_share`` and ``{kind}_area`` columns.
    thresholds : see :class:`SpuriousThresholds` for the per-image and run rules.

    Returns
    -------
    dict with, per kind, ``mean``, ``low``, ``high`` (mean share, 95 %
    bootstrap CI), ``area`` (mean area fraction, the uniform-map share),
    ``enrichment`` (markers only: mean enrichment over images with markers,
    with ``enrichment_low``/``enrichment_high``; and with occlusion results
    ``occlusion_drop`` (mean, CI) and ``dependence_rate``), ``threshold``,
    ``image_flag_rate`` and ``flagged``; plus ``image_flag_rate`` (any kind),
    ``flagged`` (any kind), ``reasons`` (kinds flagged), ``n_images`` and the
    ``thresholds``.
    """
    flags = image_flags(table, thresholds)
    n = len(table)
    summary: dict = {"n_images": int(n), "thresholds": thresholds.to_dict()}
    reasons = []
    for kind in SPURIOUS_KINDS:
        ci = bootstrap_mean_ci(table[f"{kind}_share"].to_numpy(dtype=float), seed=seed)
        rate = float(flags[f"{kind}_flag"].mean()) if n else math.nan
        entry = {
            "mean": ci.mean,
            "low": ci.low,
            "high": ci.high,
            "area": float(np.nanmean(table[f"{kind}_area"].to_numpy(dtype=float))) if n else math.nan,
            "threshold": thresholds.value(kind),
            "image_flag_rate": rate,
        }
        level = ci.mean
        if kind == "marker":
            e = bootstrap_mean_ci(flags["marker_enrichment"].to_numpy(dtype=float), seed=seed)
            entry.update(enrichment=e.mean, enrichment_low=e.low, enrichment_high=e.high)
            level = e.mean
            if "marker_occlusion_drop" in table.columns:
                drop = table["marker_occlusion_drop"].to_numpy(dtype=float)
                d = bootstrap_mean_ci(drop, seed=seed)
                entry.update(
                    occlusion_drop=d.mean,
                    occlusion_drop_low=d.low,
                    occlusion_drop_high=d.high,
                    dependence_rate=float(np.mean(np.nan_to_num(drop, nan=-np.inf) > thresholds.marker_dependence)),
                )
        flagged = bool(
            (np.isfinite(level) and level > thresholds.value(kind)) or (n and rate > thresholds.max_flag_rate)
        )
        entry["flagged"] = flagged
        summary[kind] = entry
        if flagged:
            reasons.append(kind)
    summary["image_flag_rate"] = float(flags["spurious_flag"].mean()) if n else math.nan
    summary["flagged"] = bool(reasons)
    summary["reasons"] = reasons
    return summary
