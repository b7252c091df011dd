"""Intensity windows for files that say nothing about display: robust percentiles.

A DICOM without VOI LUT or Window Center/Width, and a raster of raw
detector values, are mapped to [0, 1] between robust percentiles
(:func:`window_without_display`): by default the image's low percentile and
the high percentile *inside the breast* (:func:`window_breast_percentiles`,
which needs :func:`mammography.io.mask.breast_mask`), or, for runs of
preprocessing version 1, the whole image's (:func:`window_percentiles`).
"""

from __future__ import annotations

import numpy as np

from mammography.errors import ConfigError
from mammography.io.mask import breast_mask

__all__ = [
    "BREAST_PERCENTILES",
    "PERCENTILES",
    "PERCENTILE_WINDOWS",
    "check_percentile_window",
    "window_breast_percentiles",
    "window_percentiles",
    "window_without_display",
]

#: Robust percentiles (low, high) used when a file carries no display window.
PERCENTILES = (0.5, 99.5)
#: Percentiles (image low, breast high) of the window for files without one
#: (:func:`window_breast_percentiles`). 99.6 rather than 99.5 inside the
#: breast: the mask errs outwards by a pixel or two into the film base (1-2 %
#: of its area on digitised film), which would dilute the breast's share and
#: let a little more than 0.5 % of the true breast saturate.
BREAST_PERCENTILES = (0.5, 99.6)
#: the rules :func:`window_without_display` knows
PERCENTILE_WINDOWS = ("breast", "image")
#: Percentiles are estimated on at most about this many pixels (a regular
#: subsample); at full-field size this keeps the estimate under ~20 ms.
_PERCENTILE_SAMPLES = 1_000_000

def window_percentiles(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map values to [0, 1] between two robust percentiles.

    Used when a file says nothing about display (no VOI LUT, no window, or
    raw detector values in a raster). The low/high percentiles (default
    0.5/99.5) ignore a few extreme pixels (dead pixels, burned-in labels).

    Parameters
    ----------
    values : np.ndarray
        2-D array of any real dtype.
    percentiles : (low, high)
        Percentiles in 0..100.

    Returns
    -------
    float32 array of the same shape in [0, 1]; all zeros for a constant image.
    """
    step = max(1, int(np.ceil(np.sqrt(values.size / _PERCENTILE_SAMPLES))))
    sample = values[::step, ::step] if values.ndim == 2 else values.reshape(-1)[::step * step]
    lo, hi = np.percentile(sample, percentiles)
    out = np.asarray(values, dtype=np.float32)
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (out - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def window_breast_percentiles(
    values: np.ndarray, percentiles: tuple[float, float] = BREAST_PERCENTILES, *, monochrome1: bool = False
) -> tuple[np.ndarray, str]:
    """Map values to [0, 1]: low percentile of the image, high percentile *inside the breast*.

    The rule for files that carry no display window. A window from the
    whole image's percentiles depends on how much background, film edge and
    label the image holds: on a digitised film (half of it background, with
    bright strips and labels about as bright as the densest tissue) its high
    end lands inside the breast's range and saturates up to a few percent of
    the breast, exactly the densest tissue. Here the breast is segmented on
    the whole-image window first (:func:`mammography.io.mask.breast_mask`,
    which leaves film-edge strips and labels out), then the high percentile
    is taken over the breast's pixels alone, so at most ``100 - high`` percent
    of the breast saturates; the low percentile stays the image's (the
    background stays black and the faint periphery above it).

    Parameters
    ----------
    values : 2-D array of any real dtype.
    percentiles : (low, high) in 0..100.
    monochrome1 : the values show dense tissue dark (DICOM MONOCHROME1, TIFF
        min-is-white; the caller inverts the result): the breast is found in
        the inverted image and the roles of the ends swap (the dense end is
        the low percentile inside the breast, the background end the
        image's high percentile).

    Returns
    -------
    (pixels, rule): float32 [0, 1] (not inverted) and
    ``'breast_percentiles'``, or the whole-image window and ``'percentiles'``
    when no breast is found (less than 1 % of the image) or the breast is flat.
    """
    whole = window_percentiles(values, percentiles)
    breast = breast_mask(1.0 - whole if monochrome1 else whole)
    if breast.sum() < 0.01 * breast.size:
        return whole, "percentiles"
    low, high = percentiles
    step = max(1, int(np.ceil(np.sqrt(values.size / _PERCENTILE_SAMPLES))))
    image = np.asarray(values)[::step, ::step]
    inside = np.asarray(values)[breast]
    inside = inside[:: max(1, inside.size // _PERCENTILE_SAMPLES)]
    if monochrome1:
        lo, hi = float(np.percentile(inside, 100.0 - high, method="lower")), float(np.percentile(image, 100.0 - low))
    else:
        lo, hi = float(np.percentile(image, low)), float(np.percentile(inside, high, method="higher"))
    if not hi > lo:
        return whole, "percentiles"
    out = (np.asarray(values, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out), "breast_percentiles"


def window_without_display(values: np.ndarray, *, monochrome1: bool = False,
                           percentile_window: str = "breast") -> tuple[np.ndarray, str]:
    """The window of a file that says nothing about display: ``(pixels, rule)``.

    ``"breast"``: :func:`window_breast_percentiles`; ``"image"``: the whole
    image's robust percentiles (:func:`window_percentiles`, rule
    ``'percentiles'``), the rule of runs trained with preprocessing version 1.
    """
    if percentile_window == "image":
        return window_percentiles(values), "percentiles"
    return window_breast_percentiles(values, monochrome1=monochrome1)


def check_percentile_window(percentile_window: str) -> None:
    """Raise :class:`ConfigError` unless ``percentile_window`` is one of :data:`PERCENTILE_WINDOWS`."""
    if percentile_window not in PERCENTILE_WINDOWS:
        raise ConfigError(f"percentile_window must be one of {', '.join(PERCENTILE_WINDOWS)}, got {percentile_window!r}")
