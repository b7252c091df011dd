"""Spurious attention: heatmap mass outside the breast, on the image border, on burned-in markers and film edges.

A density model should look at breast tissue. Attention that lands outside
the breast, in a band along the image border (collimation edges, scanner
labels), on burned-in text and markers or on the bright film-edge strips of
digitised film is a warning sign that the model may have learned a shortcut.
This module measures, per image, the share of the heatmap's mass
(:func:`~mammography.analysis.maps.mass_share`) in those regions and judges
it *against what a uniform map would put there on that image*, because the
regions' areas differ widely: a uniform map puts 0.5-0.6 of its mass outside
the breast of a clean phantom but 0.67-0.83 outside the breast of a
digitised film, so no absolute share can serve both
(:class:`SpuriousThresholds`):

* outside the breast, in the border band and on film edges: the *odds ratio*
  ``(share / (1 - share)) / (area / (1 - area))``, the density of attention
  in the region relative to its density elsewhere; a uniform map gives 1;
* on markers (well under 1 % of an image): the *enrichment* ``share / area``
  (for so small a region the same thing), and the fall of the predicted
  class's probability when the markers are painted over.

Burned-in markers and film edges are found in the pixels
(:func:`find_burned_in`): film-edge strips by
:func:`mammography.io.film_edge_mask`, plus bright bands that run along a
border (a strip too short to be found as one); markers are the other groups
of very bright pixels outside the breast whose tight box covers at most 6 %
of the image (multi-letter film labels reach 4 %), merged letter by letter
but never with a strip. When a manifest records an artefact's bounding box
(``artifact_bbox``) it is added to the markers, but detection never needs it.

Every map and mask here is on one grid (see :mod:`mammography.analysis.maps`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from mammography.analysis.maps import area_fractions, bootstrap_mean_ci, check_region, mass_shares, normalise_batch
from mammography.errors import ConfigError

__all__ = [
    "BORDER_FRACTION",
    "SPURIOUS_KINDS",
    "BurnedIn",
    "SpuriousShares",
    "SpuriousThresholds",
    "border_band",
    "detect_markers",
    "find_burned_in",
    "odds_ratio",
    "bbox_mask",
    "parse_bbox",
    "spurious_shares",
    "spurious_batch",
    "image_flags",
    "summarise_spurious",
]

#: width of the border band, as a fraction of the image side it runs along
BORDER_FRACTION = 0.03
#: the regions measured, as named in column and key names (``film_edge`` only where measured)
SPURIOUS_KINDS = ("outside_breast", "border", "marker", "film_edge")
#: kinds judged by the odds ratio against a uniform map (markers: by enrichment)
RATIO_KINDS = ("outside_breast", "border", "film_edge")
#: the per-image rule in one sentence (for method texts)
RULE_TEXT = (
    "each share is judged against what a uniform map would put in the same region of the same image: outside the "
    "breast, in the border band and on film edges by the odds ratio (share / (1 - share)) / (area / (1 - area)), "
    "on markers by the enrichment share / area; both are 1 for a uniform map"
)


@dataclass(frozen=True)
class SpuriousThresholds:
    """When attention counts as spurious, per image and per run.

    Every per-image rule compares the heatmap with a uniform map *on the
    same image* (module docstring): outside the breast, in the border band
    and on film edges the odds ratio of the region's share against its area,
    on markers the enrichment ``share / area``.

    Defaults were set on phantom experiments (EfficientNet-B0 at 96-128 px,
    Grad-CAM at ``features.8``, 15 trained models). Their mean shares were
    45-55 % outside the breast (a uniform map: about 56 %) and 7-9 % in the
    border band (uniform: 12 %); the old absolute limits that never flagged a
    model that learned the task (0.7 outside the breast, 0.2 in the band)
    both correspond to an odds ratio of about 1.8 on those images, hence 2.
    Single images reached a marker enrichment of 1.9 and an occlusion drop of
    0.09. Untrained networks were flagged (their Grad-CAM follows bright
    edges: enrichments of 2-3.7 on the text markers), and so was a model that
    predicted class 4 from the shortcut square alone (occlusion drops of 0.87).

    Attributes
    ----------
    outside_breast_ratio : float, default 2.0
        An image is flagged when the odds ratio of its mass outside the breast
        against the area outside the breast exceeds this (attention twice as
        dense outside the breast as inside, relative to a uniform map).
    border_ratio : float, default 2.0
        ... the same for the border band.
    film_edge_ratio : float, default 2.0
        ... the same for film-edge strips (digitised film only).
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
        when its mean ratio (mean enrichment for markers) exceeds the
        per-image threshold.
    """

    outside_breast_ratio: float = 2.0
    border_ratio: float = 2.0
    film_edge_ratio: float = 2.0
    marker_enrichment: float = 3.0
    marker_dependence: float = 0.25
    max_flag_rate: float = 0.1

    def __post_init__(self):
        for name in ("max_flag_rate", "marker_dependence"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"spurious-attention threshold {name}={value} must be in (0, 1]")
        for name in ("outside_breast_ratio", "border_ratio", "film_edge_ratio", "marker_enrichment"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"spurious-attention threshold {name}={value} must be a positive ratio "
                    "(1 = what a uniform map gets)"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SpuriousThresholds":
        """From :meth:`to_dict`; keys of other versions (the absolute shares of old analyses) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def value(self, kind: str) -> float:
        """The per-image threshold of ``kind`` (the enrichment threshold for markers, else the odds ratio)."""
        return self.marker_enrichment if kind == "marker" else getattr(self, f"{kind}_ratio")


@dataclass(frozen=True)
class SpuriousShares:
    """Where one heatmap's mass goes (shares in [0, 1], NaN for a map without mass).

    Attributes
    ----------
    outside_breast, border, marker, film_edge : float
        Shares of mass outside the breast, in the border band, on markers,
        on film-edge strips.
    outside_breast_area, border_area, marker_area, film_edge_area : float
        Area fractions of the same regions (the share of a uniform map).
    n_markers, n_film_edges : int
        Marker regions and film-edge strips found in the image.
    """

    outside_breast: float
    border: float
    marker: float
    outside_breast_area: float
    border_area: float
    marker_area: float
    n_markers: int = 0
    film_edge: float = 0.0
    film_edge_area: float = 0.0
    n_film_edges: int = 0

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


@dataclass(frozen=True)
class BurnedIn:
    """What is burned into an image outside the breast (:func:`find_burned_in`).

    Attributes
    ----------
    markers : bool (H, W), union of the markers' boxes.
    n_markers : number of markers (labels, text, squares).
    film_edges : bool (H, W), film-edge strips.
    n_film_edges : number of strips (borders carrying one, plus bands along a border).
    """

    markers: np.ndarray
    n_markers: int
    film_edges: np.ndarray
    n_film_edges: int


def find_burned_in(
    pixels: np.ndarray,
    breast: np.ndarray,
    *,
    film_edges: np.ndarray | None = None,
    min_contrast: float = 0.25,
    bright_fraction: float = 0.3,
    max_area_fraction: float = 0.06,
    merge_fraction: float = 0.01,
    min_pixels: int = 4,
) -> BurnedIn:
    """Find burned-in markers and film-edge strips: very bright things outside the breast.

    Parameters
    ----------
    pixels : float (H, W) in [0, 1], dense = bright (as read by
        :func:`mammography.io.read_mammogram`).
    breast : bool (H, W) breast mask of the same image.
    film_edges : bool (H, W) strips already found (default:
        :func:`mammography.io.film_edge_mask` of ``pixels``).
    min_contrast : images whose brightest pixel outside the breast and the
        strips is less than this above the background level (the median
        outside the breast) have no markers.
    bright_fraction : a pixel outside the breast (and at least 2 px away
        from it and from the strips) is *bright* when it lies more than this
        fraction of the way from the background level to that brightest
        pixel. 0.3 keeps thin, antialiased text next to a saturated square.
    max_area_fraction : a group whose tight box (around its bright pixels)
        covers more than this fraction of the image is not a marker (e.g. a
        part of the breast the mask missed); multi-letter film labels cover
        up to about 4 %.
    merge_fraction : bright pixels closer than this fraction of the longer
        side are one group, so the letters of a word form one marker.
    min_pixels : smaller groups are noise.

    Returns
    -------
    BurnedIn
        Markers are the tight boxes of their groups grown by one pixel (a
        solid region the size of the text). A group that runs along a border
        it touches (at least a fifth of that border and four times longer
        than deep) is a film edge too short to be found as a strip: it joins
        the film edges, never the markers.
    """
    from mammography.io import film_edge_mask

    p = np.asarray(pixels, dtype=np.float32)
    b = check_region(breast, p.shape, "breast mask")
    edges = film_edge_mask(p) if film_edges is None else check_region(film_edges, p.shape, "film-edge mask")
    n_edges = _count_strips(edges)
    near_edges = ndimage.binary_dilation(edges, iterations=2) if edges.any() else edges
    # two pixels of margin: the resampled skin line is not a marker
    outside = ~ndimage.binary_dilation(b, iterations=2) if b.any() else np.ones(p.shape, dtype=bool)
    outside &= ~near_edges
    markers = np.zeros(p.shape, dtype=bool)
    if not outside.any():
        return BurnedIn(markers, 0, edges, n_edges)
    values = p[outside]
    background, peak = float(np.median(values)), float(values.max())
    if peak - background < min_contrast:
        return BurnedIn(markers, 0, edges, n_edges)
    bright = outside & (p > background + bright_fraction * (peak - background))
    bright, edges, n_edges = _strip_remnants(bright, edges, n_edges)
    merge = max(1, int(round(merge_fraction * max(p.shape))))
    grown = ndimage.binary_dilation(bright, structure=np.ones((3, 3), bool), iterations=merge)
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    if not n:
        return BurnedIn(markers, 0, edges, n_edges)
    members = np.where(bright, labels, 0)
    counts = np.bincount(members.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(members, max_label=n)
    count = 0
    max_area = max_area_fraction * p.size
    for k, box in enumerate(boxes, start=1):
        if box is None or counts[k] < min_pixels:
            continue
        rows, cols = box
        if (rows.stop - rows.start) * (cols.stop - cols.start) > max_area:
            continue
        markers[max(0, rows.start - 1) : rows.stop + 1, max(0, cols.start - 1) : cols.stop + 1] = True
        count += 1
    return BurnedIn(markers & ~edges, count, edges, n_edges)


def detect_markers(pixels: np.ndarray, breast: np.ndarray, **kwargs) -> tuple[np.ndarray, int]:
    """``(mask, count)`` of the burned-in markers (:func:`find_burned_in`; film edges are not markers)."""
    found = find_burned_in(pixels, breast, **kwargs)
    return found.markers, found.n_markers


def _strip_remnants(bright: np.ndarray, edges: np.ndarray, n_edges: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Move what belongs to film edges out of the marker candidates, before letters are merged.

    A bright group (8-connected, unmerged, so a label next to a strip stays
    apart) is a film edge when it runs along a border it touches (a strip
    too short or too blurred to be found as one), or when half of it lies
    within 3 px of a strip found already (the strip's blurred rim or its
    ragged end). Returns (the remaining candidates, the film edges, their count).
    """
    parts, n = ndimage.label(bright, structure=np.ones((3, 3), bool))
    if not n:
        return bright, edges, n_edges
    near = ndimage.binary_dilation(edges, iterations=3) if edges.any() else edges
    band = _strip_bands(edges)
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    close = np.bincount(parts[near], minlength=n + 1) if edges.any() else np.zeros(n + 1, dtype=np.int64)
    in_band = np.bincount(parts[band], minlength=n + 1) if band.any() else np.zeros(n + 1, dtype=np.int64)
    edges = edges.copy()
    for k, box in enumerate(ndimage.find_objects(parts), start=1):
        if box is None:
            continue
        along = _runs_along_border(box, bright.shape)
        if along or close[k] >= 0.5 * sizes[k] or in_band[k] == sizes[k]:
            edges |= parts == k
            n_edges += int(along and close[k] == 0)  # a remnant of a known strip is not another strip
    return bright & ~edges, edges, n_edges


def _strip_bands(edges: np.ndarray) -> np.ndarray:
    """Between each border and the inner edge of the strip along it (2 px more): where a strip's pieces lie.

    A label placed next to a strip lies beyond it, never inside this band.
    """
    band = np.zeros(edges.shape, dtype=bool)
    if not edges.any():
        return band
    H, W = edges.shape
    for lines, size, put in (
        (edges, H, lambda d: band.__setitem__((slice(0, d), slice(None)), True)),
        (edges[::-1], H, lambda d: band.__setitem__((slice(H - d, H), slice(None)), True)),
        (edges.T, W, lambda d: band.__setitem__((slice(None), slice(0, d)), True)),
        (edges.T[::-1], W, lambda d: band.__setitem__((slice(None), slice(W - d, W)), True)),
    ):
        near = lines[: max(1, int(0.12 * size))]
        rows = np.flatnonzero(near.mean(axis=1) > 0.2)  # lines mostly strip: a strip along this border
        if rows.size:
            put(int(rows.max()) + 3)
    return band


def _runs_along_border(box: tuple[slice, slice], shape: tuple[int, int]) -> bool:
    """A group touching a border and running along it: at least a fifth of it, four times longer than deep."""
    rows, cols = box
    height, width = rows.stop - rows.start, cols.stop - cols.start
    H, W = shape
    along_rows = (rows.start == 0 or rows.stop == H) and width >= 0.2 * W and width >= 4 * height
    along_cols = (cols.start == 0 or cols.stop == W) and height >= 0.2 * H and height >= 4 * width
    return bool(along_rows or along_cols)


def _count_strips(edges: np.ndarray) -> int:
    """Strips in a film-edge mask: its connected parts (strips meeting in a corner count once)."""
    return int(ndimage.label(edges)[1]) if edges.any() else 0


def spurious_shares(
    heatmap: np.ndarray,
    breast: np.ndarray,
    markers: np.ndarray | None = None,
    border_fraction: float = BORDER_FRACTION,
    n_markers: int | None = None,
    film_edges: np.ndarray | None = None,
    n_film_edges: int | None = None,
) -> SpuriousShares:
    """Share of one heatmap's mass outside the breast, in the border band, on markers and on film edges.

    Parameters
    ----------
    heatmap : (H, W) map, normalised here.
    breast : bool (H, W) breast mask.
    markers : bool (H, W) marker regions (:func:`find_burned_in`, plus any
        known artefact box); None = no markers.
    border_fraction : width of the border band (:func:`border_band`).
    n_markers : number of marker regions, recorded as is (default: 1 if
        ``markers`` has any pixel else 0).
    film_edges, n_film_edges : film-edge strips and their number, likewise.
    """
    shape = np.shape(heatmap)
    b = check_region(breast, shape, "breast mask")
    m = np.zeros(shape, dtype=bool) if markers is None else check_region(markers, shape, "marker mask")
    e = np.zeros(shape, dtype=bool) if film_edges is None else check_region(film_edges, shape, "film-edge mask")
    h = normalise_batch(torch.as_tensor(np.asarray(heatmap, dtype=np.float64))[None])
    values = {k: float(v[0]) for k, v in spurious_batch(
        h, *(torch.from_numpy(x)[None] for x in (b, m, e)), border_fraction).items()}
    return SpuriousShares(
        **values,
        n_markers=int(n_markers if n_markers is not None else m.any()),
        n_film_edges=int(n_film_edges if n_film_edges is not None else e.any()),
    )


def spurious_batch(
    h: torch.Tensor,
    breast: torch.Tensor,
    markers: torch.Tensor,
    film_edges: torch.Tensor,
    border_fraction: float = BORDER_FRACTION,
) -> dict[str, torch.Tensor]:
    """:func:`spurious_shares` of a batch of *normalised* maps, on their device.

    Parameters
    ----------
    h : float64 (B, H, W) normalised maps (:func:`~mammography.analysis.maps.normalise_batch`).
    breast, markers, film_edges : bool (B, H, W) masks.
    border_fraction : width of the border band.

    Returns
    -------
    dict of float64 (B,) tensors named like the fields of :class:`SpuriousShares`
    (shares and areas; a share is 0 where its region is empty).
    """
    shape = tuple(h.shape[-2:])
    band = torch.from_numpy(border_band(shape, border_fraction)).to(h.device).expand(h.shape)
    outside = ~breast
    out = {"outside_breast": mass_shares(h, outside), "border": mass_shares(h, band)}
    for name, region in (("marker", markers), ("film_edge", film_edges)):
        present = region.flatten(1).any(dim=1)
        out[name] = torch.where(present, mass_shares(h, region), torch.zeros_like(out["border"]))
    for name, region in (("outside_breast", outside), ("border", band), ("marker", markers), ("film_edge", film_edges)):
        out[f"{name}_area"] = area_fractions(region)
    return out


def odds_ratio(share, area) -> np.ndarray:
    """``(share / (1 - share)) / (area / (1 - area))``: 1 for a uniform map, NaN where the area is 0 or 1.

    The density of attention in a region relative to its density in the rest
    of the image, both relative to a uniform map; inf when all the mass lies
    in a region that does not cover the image.
    """
    share = np.asarray(share, dtype=float)
    area = np.asarray(area, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = share / (1.0 - share)
        ratio = odds / (area / (1.0 - area))
    return np.where((area > 0) & (area < 1) & np.isfinite(share), ratio, np.nan)


def kinds_in(table: pd.DataFrame) -> tuple[str, ...]:
    """The kinds of :data:`SPURIOUS_KINDS` that ``table`` measured (film edges only in newer analyses)."""
    return tuple(k for k in SPURIOUS_KINDS if f"{k}_share" in table.columns and f"{k}_area" in table.columns)


def _measure(table: pd.DataFrame, kind: str) -> np.ndarray:
    """The per-image quantity compared with the threshold: the odds ratio, or the enrichment for markers."""
    share = table[f"{kind}_share"].to_numpy(dtype=float)
    area = table[f"{kind}_area"].to_numpy(dtype=float)
    if kind != "marker":
        return odds_ratio(share, area)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, share / area, np.nan)


def image_flags(table: pd.DataFrame, thresholds: SpuriousThresholds = SpuriousThresholds()) -> pd.DataFrame:
    """Per-image ratios, booleans ``{kind}_flag`` and ``spurious_flag`` (any kind).

    ``table`` has the columns ``{kind}_share`` and ``{kind}_area`` for every
    kind in :data:`SPURIOUS_KINDS` (``film_edge`` may be missing),
    optionally ``marker_occlusion_drop``. The ratios are
    ``marker_enrichment`` and ``{kind}_ratio`` (odds ratio against a uniform
    map) for the other kinds. Undefined values (no mass, no marker, no film
    edge) are not flagged.
    """
    out = pd.DataFrame(index=table.index)
    kinds = kinds_in(table)
    for kind in kinds:
        out["marker_enrichment" if kind == "marker" else f"{kind}_ratio"] = _measure(table, kind)
    for kind in kinds:
        out[f"{kind}_flag"] = np.nan_to_num(_measure(table, kind), nan=-np.inf) > thresholds.value(kind)
    if "marker_occlusion_drop" in table.columns:
        drop = np.nan_to_num(table["marker_occlusion_drop"].to_numpy(dtype=float), nan=-np.inf)
        out["marker_flag"] |= drop > thresholds.marker_dependence
    out["spurious_flag"] = out[[f"{k}_flag" for k in kinds]].any(axis=1)
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
    dict with, per kind measured, ``mean``, ``low``, ``high`` (mean share,
    95 % bootstrap CI), ``area`` (mean area fraction, the uniform-map
    share), ``ratio`` with ``ratio_low``/``ratio_high`` (mean odds ratio
    against a uniform map; markers: ``enrichment`` likewise, over images with
    markers, and with occlusion results ``occlusion_drop`` (mean, CI) and
    ``dependence_rate``), ``threshold``, ``image_flag_rate`` and ``flagged``;
    plus ``image_flag_rate`` (any kind), ``flagged`` (any kind), ``reasons``
    (kinds flagged), ``n_images``, the ``thresholds`` and ``rule`` (one
    sentence naming the per-image rules).
    """
    flags = image_flags(table, thresholds)
    n = len(table)
    summary: dict = {"n_images": int(n), "thresholds": thresholds.to_dict(), "rule": RULE_TEXT}
    reasons = []
    for kind in kinds_in(table):
        if kind == "film_edge" and not (table["film_edge_area"].to_numpy(dtype=float) > 0).any():
            continue  # no image has film edges (every digital mammogram): nothing to say
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
        if kind != "marker":
            r = bootstrap_mean_ci(flags[f"{kind}_ratio"].to_numpy(dtype=float), seed=seed)
            entry.update(ratio=r.mean, ratio_low=r.low, ratio_high=r.high)
            level = r.mean
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
