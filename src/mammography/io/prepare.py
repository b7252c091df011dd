"""Turn a :class:`~mammography.io.mammogram.Mammogram` into the square model input."""

from __future__ import annotations

import numpy as np

from mammography.io.geometry import Geometry, fit_to_square
from mammography.io.mammogram import Mammogram

__all__ = ["prepare_input"]


def prepare_input(m: Mammogram, size: int = 512, normalise_laterality: bool = True) -> tuple[np.ndarray, Geometry]:
    """Fit a mammogram into a (size, size) square for the model.

    The whole image is resized with its aspect ratio kept (antialiased) and
    centre-padded with zeros, never cropped, so the breast stays whole (see
    :func:`~mammography.io.geometry.fit_to_square`).

    Parameters
    ----------
    m : Mammogram
        The image as read by :func:`~mammography.io.read_mammogram`.
    size : int
        Side of the square model input.
    normalise_laterality : bool
        Mirror right breasts (``m.laterality == 'R'``) left-right first, so
        the chest wall is on the same side for every image; the flip is
        recorded in ``Geometry.flipped`` and undone by
        ``Geometry.to_original``. Images of unknown laterality (rasters) are
        never flipped.

    Returns
    -------
    (np.ndarray, Geometry)
        float32 (size, size) in [0, 1], and the geometry that maps model
        space back onto ``m.pixels``.
    """
    flip = bool(normalise_laterality and m.laterality == "R")
    square, geometry = fit_to_square(m.pixels, size, flip=flip)
    # Antialiasing weights are positive, but rounding can leave 1 + 1e-7.
    square = np.clip(square, 0.0, 1.0, out=square).astype(np.float32, copy=False)
    return square, geometry
