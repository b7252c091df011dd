"""Place an image into the square model input.

* :func:`prepare_input`: this project's placement of a
  :class:`~mammography.io.mammogram.Mammogram` (whole image, aspect kept,
  antialiased, padded; right breasts optionally mirrored);
* :func:`prepare_pipelines_input`: the earlier ``mammography-pipelines``
  project's placement of its uint8 image (shorter side resized, centre crop).

Which one a run needs is decided by its preprocessing record
(:mod:`mammography.data.preprocess`), never by the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from mammography.errors import ConfigError
from mammography.io.geometry import Geometry, compute_crop_geometry, fit_to_square
from mammography.io.mammogram import Mammogram

__all__ = ["prepare_input", "prepare_pipelines_input"]


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


def prepare_pipelines_input(image: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """The earlier project's model square of a uint8 image, exactly.

    torchvision's ``resize(image, [size], BICUBIC, antialias=False)`` on the
    uint8 tensor, ``center_crop(size)``, then ``to_dtype(float32,
    scale=True)``: the same library calls on the same values, so the result
    equals that project's input bit for bit.

    Parameters
    ----------
    image : uint8 (H, W), or (H, W, 3) for colour (see
        :func:`mammography.io.pipelines.read_pipelines_image`).
    size : side of the square model input.

    Returns
    -------
    (np.ndarray, Geometry)
        float32 (size, size) -- or (3, size, size) for colour -- in [0, 1],
        and the crop geometry (:func:`~mammography.io.geometry.compute_crop_geometry`).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ConfigError(f"expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    colour = image.ndim == 3
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"]))
    tensor = tensor.permute(2, 0, 1) if colour else tensor.unsqueeze(0)
    geometry = compute_crop_geometry(tensor.shape[-2:], size)
    # the resize filters each channel alone, so one grey channel gives the
    # same numbers as the three replicated ones the earlier code resized
    resized = tvf.resize(tensor, [size], interpolation=InterpolationMode.BICUBIC, antialias=False)
    if tuple(resized.shape[-2:]) != geometry.resized_shape:
        raise ConfigError(
            f"torchvision resized {tuple(tensor.shape[-2:])} to {tuple(resized.shape[-2:])}, not "
            f"{geometry.resized_shape}; this torchvision version places images differently"
        )
    square = tvf.to_dtype(tvf.center_crop(resized, [size, size]), torch.float32, scale=True)
    out = square.numpy() if colour else square[0].numpy()
    return np.ascontiguousarray(out), geometry
