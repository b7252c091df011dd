"""Common ground for the attention metrics: normalised maps, mass, regions, resampling, CIs.

Where the metrics are measured
------------------------------
Every map and mask is compared on the **analysis grid**: the image in its
*original orientation* (laterality flip undone, square padding removed),
resampled so that its longer side is ``analysis_size`` pixels (by default the
model input size, e.g. 512). It is the original image space at model
resolution: masks stored as PNGs at original resolution are area-resampled onto
it (:func:`resize_mask`), low-resolution CAMs are mapped onto it through their
:class:`~mammography.io.geometry.Geometry` (:func:`map_to_grid`). Runs trained
at different input sizes or with different laterality handling therefore
compare pixel for pixel.

Definitions
-----------
* A *normalised* heatmap has its negative values set to 0 and is min-max
  scaled to [0, 1] per image, as the figures draw it (:func:`normalise_map`).
* The *mass* of a heatmap over a region is the sum of its normalised values
  there; a *share* is the mass in a region over the total mass
  (:func:`mass_share`). A uniform map puts a share equal to the region's area
  fraction into any region, which is the chance level every share is compared
  against.

Batches
-------
A run's measurements are taken on all its images at once, on the model's
device: :func:`maps_on_grid` maps stacked low-resolution CAMs onto their
grids (images with the same grid and placement together, the same
operations as :func:`map_to_grid`), :func:`normalise_batch`,
:func:`mass_shares` and :func:`area_fractions` are :func:`normalise_map`,
:func:`mass_share` and :func:`area_share` of every map of a (B, H, W) tensor
in float64. The per-map functions above are the definitions; the batched ones
give the same numbers (tested against them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mammography.errors import ConfigError
from mammography.io.geometry import Geometry, compute_geometry

__all__ = [
    "TOP_FRACTION",
    "normalise_map",
    "check_region",
    "heatmap_mass",
    "mass_share",
    "area_share",
    "top_fraction_mask",
    "grid_shape",
    "map_to_grid",
    "maps_on_grid",
    "normalise_batch",
    "mass_shares",
    "area_fractions",
    "resize_mask",
    "resize_mask_any",
    "MeanCI",
    "bootstrap_mean_ci",
]

#: default fraction of pixels that make up a map's "top region"
TOP_FRACTION = 0.2


def normalise_map(heatmap: np.ndarray) -> np.ndarray:
    """Clip negative values to 0, then min-max scale the map to [0, 1].

    This is the scale the figures draw (0 = the image's least attended pixel,
    1 = its most attended), so "attention above 0.5" means the same in a
    number and in a picture. A constant positive map becomes all ones
    (uniform attention); a map without positive values becomes all zeros
    (no attention, hence no mass).

    Parameters
    ----------
    heatmap : array (H, W) of any real dtype. NaN or infinite values are an error.

    Returns
    -------
    float64 (H, W) in [0, 1].
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ConfigError(f"expected a 2-D heatmap, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ConfigError("heatmap contains NaN or infinite values")
    h = np.clip(h, 0.0, None)
    lo, hi = (float(h.min()), float(h.max())) if h.size else (0.0, 0.0)
    if hi <= 0:
        return np.zeros_like(h)
    if hi - lo <= 1e-12 * hi:
        return np.ones_like(h)
    return (h - lo) / (hi - lo)


def check_region(region: np.ndarray, shape: tuple[int, ...], name: str = "region") -> np.ndarray:
    """``region`` as a bool array, or a :class:`ConfigError` when its shape is not ``shape``."""
    r = np.asarray(region, dtype=bool)
    if r.shape != tuple(shape):
        raise ConfigError(f"{name} of shape {r.shape} does not match the heatmap's shape {tuple(shape)}")
    return r


def heatmap_mass(heatmap: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of the normalised heatmap over ``region`` (the whole map when None)."""
    h = normalise_map(heatmap)
    if region is None:
        return float(h.sum())
    return float(h[check_region(region, h.shape)].sum())


def mass_share(heatmap: np.ndarray, region: np.ndarray, within: np.ndarray | None = None) -> float:
    """Share of the heatmap's mass that falls inside ``region``.

    Parameters
    ----------
    heatmap : (H, W) map (normalised here).
    region : bool (H, W).
    within : optional bool (H, W); when given, both the numerator and the
        denominator are restricted to it (e.g. "share of the mass inside the
        breast that falls on dense tissue").

    Returns
    -------
    float in [0, 1]; NaN when the map has no mass (in ``within``).
    """
    h = normalise_map(heatmap)
    r = check_region(region, h.shape)
    if within is not None:
        w = check_region(within, h.shape, "within-mask")
        r = r & w
        total = h[w].sum()
    else:
        total = h.sum()
    if total <= 0:
        return math.nan
    return float(h[r].sum() / total)


def area_share(region: np.ndarray, within: np.ndarray | None = None) -> float:
    """Fraction of pixels (of ``within``, or of the image) inside ``region``; NaN when empty."""
    r = np.asarray(region, dtype=bool)
    if within is None:
        return float(r.mean()) if r.size else math.nan
    w = check_region(within, r.shape, "within-mask")
    n = int(w.sum())
    return float((r & w).sum() / n) if n else math.nan


def top_fraction_mask(
    heatmap: np.ndarray, fraction: float = TOP_FRACTION, within: np.ndarray | None = None
) -> np.ndarray:
    """The most-attended ``fraction`` of pixels of a map.

    The threshold is the value of the ``ceil(fraction * n)``-th largest pixel
    (``n`` pixels in ``within`` or in the map); every pixel at or above it is
    in the region, so ties are never broken arbitrarily (the region can be a
    little larger than ``fraction``). Pixels with zero attention are never in
    the top region.

    Returns
    -------
    bool (H, W).
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"top-region fraction must be in (0, 1], got {fraction}")
    h = normalise_map(heatmap)
    values = h[check_region(within, h.shape, "within-mask")] if within is not None else h.ravel()
    if values.size == 0:
        return np.zeros(h.shape, dtype=bool)
    k = max(1, math.ceil(fraction * values.size))
    thr = np.partition(values, values.size - k)[values.size - k]
    mask = (h >= thr) & (h > 0)
    if within is not None:
        mask &= within
    return mask


def grid_shape(original_shape: tuple[int, int], analysis_size: int) -> tuple[int, int]:
    """Shape of the analysis grid of an image: its aspect ratio, longer side ``analysis_size``."""
    return tuple(compute_geometry(original_shape, analysis_size).resized_shape)


def map_to_grid(heatmap: np.ndarray | torch.Tensor, geometry: Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Map a model-space heatmap (any resolution) onto an analysis grid of ``shape``.

    Bilinear upsampling to the model size, padding removed, resized to
    ``shape`` and the laterality flip undone. ``heatmap`` may be (h, w) or
    stacked (..., h, w).

    Returns
    -------
    float32 (..., *shape).
    """
    frame = dataclasses.replace(geometry, original_shape=tuple(int(v) for v in shape))
    return frame.to_original(heatmap)


def maps_on_grid(
    maps,
    geometries: Sequence[Geometry],
    shapes: Sequence[tuple[int, int]],
    *,
    device: torch.device | str = "cpu",
    chunk: int = 64,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """:func:`map_to_grid` of many maps, batched on ``device``.

    Parameters
    ----------
    maps : (N, h, w) model-space maps (numpy or tensor), one per geometry.
    geometries : one :class:`Geometry` per map.
    shapes : the grid shape of each map.
    device : where the maps are resampled (and the tensors yielded live).
    chunk : most maps per yielded batch.

    Yields
    ------
    (indices, float32 tensor (B, *shape)): maps that share a grid shape and a
    placement in the model square, in the order of their first image.
    """
    if not len(geometries) == len(shapes) == len(maps):
        raise ConfigError(f"{len(maps)} maps, {len(geometries)} geometries and {len(shapes)} grid shapes differ")
    groups: dict[Geometry, list[int]] = {}
    for i, (g, shape) in enumerate(zip(geometries, shapes)):
        groups.setdefault(dataclasses.replace(g, original_shape=tuple(int(v) for v in shape)), []).append(i)
    for frame, members in groups.items():
        for start in range(0, len(members), max(1, chunk)):
            idx = np.asarray(members[start : start + chunk], dtype=np.int64)
            stacked = torch.as_tensor(maps[idx] if isinstance(maps, np.ndarray) else maps[torch.as_tensor(idx)])
            yield idx, frame.map_to_original(stacked.to(device))


def normalise_batch(maps: torch.Tensor) -> torch.Tensor:
    """:func:`normalise_map` of every map of a (B, H, W) tensor: float64, on its device.

    Raises
    ------
    ConfigError
        A map is not 2-D or holds NaN or infinite values.
    """
    h = torch.as_tensor(maps).to(torch.float64)
    if h.ndim != 3:
        raise ConfigError(f"expected a (B, H, W) stack of heatmaps, got shape {tuple(h.shape)}")
    if h.shape[-1] * h.shape[-2] == 0 or h.shape[0] == 0:
        return h.clamp_min(0.0)
    lo, hi = torch.aminmax(h.flatten(1), dim=1)
    if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
        raise ConfigError("heatmap contains NaN or infinite values")
    # clipping commutes with the extremes: those of the clipped map are the clipped extremes
    lo, hi = lo.clamp_min(0.0)[:, None, None], hi.clamp_min(0.0)[:, None, None]
    out = h.clamp_min(0.0).sub_(lo).div_(hi - lo)
    flat = (hi - lo <= 1e-12 * hi).flatten()
    empty = (hi <= 0).flatten()
    if bool(flat.any()):
        out[flat] = 1.0
    if bool(empty.any()):
        out[empty] = 0.0
    return out


def _sum2(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1))


def mass_shares(h: torch.Tensor, region: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`mass_share` of every *normalised* map of ``h`` (B, H, W) in ``region``: float64 (B,), NaN without mass."""
    zero = h.new_zeros(())
    if within is not None:
        region = region & within
        total = _sum2(torch.where(within, h, zero))
    else:
        total = _sum2(h)
    mass = _sum2(torch.where(region, h, zero))
    return torch.where(total > 0, mass / total, torch.full_like(total, math.nan))


def area_fractions(region: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`area_share` of every mask of a (B, H, W) bool tensor: float64 (B,), NaN where empty."""
    if within is None:
        n = torch.full(region.shape[:-2], region.shape[-2] * region.shape[-1], dtype=torch.float64,
                       device=region.device)
        inside = _sum2(region).to(torch.float64)
    else:
        n = _sum2(within).to(torch.float64)
        inside = _sum2(region & within).to(torch.float64)
    return torch.where(n > 0, inside / n, torch.full_like(n, math.nan))


def _box_coverage(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fraction of each target pixel covered by ``mask`` (exact box/area resampling, PIL's BOX filter)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ConfigError(f"expected a 2-D mask, got shape {m.shape}")
    h, w = (int(v) for v in shape)
    image = Image.fromarray(np.ascontiguousarray(m > 0, dtype=np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.Resampling.BOX), dtype=np.float32)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-resample a boolean (or 0/1) mask to ``shape``; a pixel is in when at least half covered.

    Returns
    -------
    bool (*shape).
    """
    m = np.asarray(mask)
    if m.shape == tuple(shape):
        return m.astype(bool)
    return _box_coverage(m, shape) >= 0.5 - 1e-6


def resize_mask_any(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a mask to ``shape`` keeping every pixel that touches it.

    Used for thin structures such as burned-in text, which area resampling
    would erase.
    """
    m = np.asarray(mask)
    if m.shape == tuple(shape):
        return m.astype(bool)
    return _box_coverage(m, shape) > 1e-6


@dataclass(frozen=True)
class MeanCI:
    """A mean with its bootstrap confidence interval.

    Attributes
    ----------
    mean : float, mean of the finite values (NaN when there are none).
    low, high : float, percentile-bootstrap bounds (equal to ``mean`` for a
        single value; NaN when there are none).
    n : int, number of finite values used.
    confidence : float, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bootstrap_mean_ci(
    values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> MeanCI:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    NaN values (metrics that are undefined for an image, e.g. an empty
    region) are left out and ``n`` counts the rest. Resampling uses a
    :class:`numpy.random.Generator` seeded with ``seed`` so the interval is
    reproducible.

    Parameters
    ----------
    values : 1-D array-like of floats (booleans count as 0/1).
    confidence : coverage of the interval, in (0, 1).
    n_resamples : number of bootstrap resamples.
    seed : seed of the generator.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(v.mean())
    if n == 1 or np.all(v == v[0]):
        return MeanCI(mean, mean, mean, n, confidence)
    rng = np.random.default_rng(seed)
    # resample in chunks so memory stays small for large validation sets
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, (1 << 22) // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # the percentile interval of a skewed resample can miss the sample mean by rounding only
    return MeanCI(mean, float(min(low, mean)), float(max(high, mean)), n, confidence)
