"""A small breast-like test image shared by the io tests (not a test module).

The image has a half-ellipse of textured tissue against the chest wall (left
edge for a left breast), a dark noisy background and a small bright square
marker in the top corner away from the breast, like a burned-in laterality
marker. The true breast and marker regions are returned with it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def breast_phantom(shape=(128, 96), *, side="L", seed=0, marker=True):
    """Return (image float64 in [0, 1] dense bright, breast bool, marker bool).

    Parameters
    ----------
    shape : (H, W)
    side : 'L' puts the chest wall on the left edge, 'R' on the right.
    seed : seeds the texture and the noise.
    marker : add the bright corner marker.
    """
    H, W = shape
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    dist = ((rows - (H - 1) / 2) / (0.42 * H)) ** 2 + (cols / (0.70 * W)) ** 2
    breast = dist <= 1.0
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, H / 40))
    texture = (texture - texture.min()) / np.ptp(texture)
    thickness = np.sqrt(np.clip(1.0 - dist, 0.0, 1.0))  # thinner, darker towards the skin
    image = np.where(breast, 0.30 + 0.35 * texture + 0.20 * thickness, 0.03)
    image = image + rng.normal(0.0, 0.01, shape)
    marker_mask = np.zeros(shape, dtype=bool)
    if marker:
        size, margin = max(4, H // 12), max(2, H // 32)
        marker_mask[margin : margin + size, W - margin - size : W - margin] = True
        image[marker_mask] = 0.97
    image = np.clip(image, 0.0, 1.0)
    if side == "R":
        image, breast, marker_mask = image[:, ::-1], breast[:, ::-1], marker_mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(breast), np.ascontiguousarray(marker_mask)
