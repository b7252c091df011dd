"""Every per-image attention measurement of a run, batched over its images on the model's device.

:func:`measure_images` takes a run's low-resolution CAMs, their geometries
and the images' facts (:mod:`mammography.analysis.facts`), maps the CAMs onto
the analysis grids in batches (:func:`~mammography.analysis.maps.maps_on_grid`),
normalises them in float64 and measures, for all images of a batch at once:

* the spurious shares and areas (:func:`~mammography.analysis.spurious.spurious_batch`);
* localisation against the ROI where the image has one
  (:func:`~mammography.analysis.localisation.localisation_batch`);
* the dense-tissue pattern (:func:`~mammography.analysis.patterns.pattern_batch`).

The numbers are those of the per-image functions
(:func:`~mammography.analysis.spurious.spurious_shares`,
:func:`~mammography.analysis.localisation.localisation_metrics`,
:func:`~mammography.analysis.patterns.pattern_metrics`) on the same map and
masks: the same operations, summed in another order (tested to 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mammography.analysis.facts import ImageFacts
from mammography.analysis.localisation import LOCALISATION_METRICS, localisation_batch
from mammography.analysis.maps import maps_on_grid, normalise_batch
from mammography.analysis.patterns import PATTERN_METRICS, pattern_batch
from mammography.analysis.spurious import spurious_batch
from mammography.io.geometry import Geometry

__all__ = ["LOCALISATION_COLUMNS", "SPURIOUS_COLUMNS", "measure_images"]

#: the spurious columns of the per-image table, in order
SPURIOUS_COLUMNS = tuple(f"{kind}_{what}" for kind in ("outside_breast", "border", "marker", "film_edge")
                         for what in ("share", "area"))
#: the localisation columns (NaN for images without an ROI)
LOCALISATION_COLUMNS = (*LOCALISATION_METRICS, "roi_area_share")
#: most grid pixels of a batch (x 8 bytes per float64 map): bounds the memory of one step
_BATCH_PIXELS = 1 << 20


def _stack(masks: Sequence[np.ndarray], device) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks)).to(device)


def measure_images(
    maps: np.ndarray,
    geometries: Sequence[Geometry],
    facts: Sequence[ImageFacts],
    dense: Sequence[np.ndarray],
    *,
    border_fraction: float,
    attention_threshold: float,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """The per-image measurements of ``maps`` (module docstring), one array per column.

    Parameters
    ----------
    maps : (N, h, w) model-space CAMs (raw or normalised: they are normalised here).
    geometries : each map's :class:`Geometry` (how the run's model saw the image).
    facts : each image's :class:`ImageFacts` (its grid decides where it is measured).
    dense : each image's dense-tissue mask on its grid.
    border_fraction, attention_threshold : as in :class:`~mammography.analysis.options.AnalysisOptions`.
    device : where the maps are resampled and measured.

    Returns
    -------
    dict column -> float64 (N,): :data:`SPURIOUS_COLUMNS`, :data:`LOCALISATION_COLUMNS`
    (NaN where an image has no ROI) and the pattern metrics.
    """
    n = len(facts)
    columns = {c: np.full(n, math.nan) for c in (*SPURIOUS_COLUMNS, *LOCALISATION_COLUMNS, *PATTERN_METRICS)}
    if n == 0:
        return columns
    shapes = [f.shape for f in facts]
    largest = max(h * w for h, w in shapes)
    for idx, heat in maps_on_grid(maps, geometries, shapes, device=device, chunk=max(1, _BATCH_PIXELS // largest)):
        h = normalise_batch(heat)
        members = [facts[i] for i in idx]
        breast = _stack([f.breast for f in members], h.device)
        spurious = spurious_batch(h, breast, _stack([f.markers for f in members], h.device),
                                  _stack([f.film_edges for f in members], h.device), border_fraction)
        for kind in ("outside_breast", "border", "marker", "film_edge"):
            columns[f"{kind}_share"][idx] = spurious[kind].cpu().numpy()
            columns[f"{kind}_area"][idx] = spurious[f"{kind}_area"].cpu().numpy()
        with_roi = np.array([f.roi is not None for f in members])
        if with_roi.any():
            roi = _stack([f.roi for f in members if f.roi is not None], h.device)
            keep = torch.from_numpy(np.flatnonzero(with_roi)).to(h.device)
            localisation = localisation_batch(h[keep], roi, attention_threshold)
            for name in LOCALISATION_COLUMNS:
                columns[name][idx[with_roi]] = localisation[name].cpu().numpy()
        patterns = pattern_batch(h, breast, _stack([dense[i] for i in idx], h.device), attention_threshold)
        for name in PATTERN_METRICS:
            columns[name][idx] = patterns[name].cpu().numpy()
    return columns
