"""One phantom mammogram: pixels plus the masks that make it a known answer.

A phantom is drawn in a canonical left-breast frame (chest wall on column 0)
and mirrored for right breasts at the end, so a right breast shows its chest
wall on the right edge as on a reading station. Its parts, back to front:

* air (dark), the breast outline: a half super-ellipse grown from the chest
  wall with a few random low-order harmonics on its radius; on MLO it leans
  downwards and runs off the top edge into the axilla;
* fatty background with faint fat-lobule texture and radial ligament streaks
  converging on the nipple, fading towards the skin where the compressed
  breast gets thinner, and a thin brighter skin line;
* fibroglandular tissue: power-law ("1/f^beta") noise plus a prior that
  favours the nipple-chest-wall axis and avoids the subcutaneous fat, cut at
  the quantile that makes its area exactly the requested fraction of the
  breast; drawn with soft, cloud-like edges and its own fine texture;
* on MLO a pectoral muscle triangle in the chest-wall top corner;
* quantum-like noise (variance grows with the signal);
* a burned-in laterality/view text marker (``"L CC"``) in a top or bottom
  corner away from the chest wall, outside the breast, and optionally a
  bright square "shortcut" artefact near the other far corner.

Pixel values are display intensities in [0, 1] with dense tissue bright
(MONOCHROME2 sense); :mod:`mammography.synth.dataset` turns them into stored
DICOM values. Everything is drawn from one :class:`numpy.random.Generator`, so
a seed fixes the phantom bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage, special

BIRADS_FRACTION_LIMITS: dict[int, tuple[float, float]] = {
    1: (0.0, 0.25),
    2: (0.25, 0.50),
    3: (0.50, 0.75),
    4: (0.75, 1.0),
}
"""BI-RADS area share of fibroglandular tissue per class (lower, upper)."""

TARGET_FRACTION_RANGES: dict[int, tuple[float, float]] = {
    1: (0.05, 0.20),
    2: (0.30, 0.45),
    3: (0.55, 0.70),
    4: (0.80, 0.95),
}
"""Where the generator draws a class's dense fraction: the middle of the
BI-RADS range, 5 points away from each class boundary."""

VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")

# 5x7 bitmap glyphs for the marker text: dependency-free and identical on
# every machine (a FreeType font would make the bytes depend on the build).
_GLYPHS = {
    "L": ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
    "R": ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
    "C": [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
    "M": ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
    "O": [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
    " ": ["...", "...", "...", "...", "...", "...", "..."],
}


@dataclass(frozen=True)
class Phantom:
    """A phantom mammogram and its ground truth, in display orientation.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32 (H, W) in [0, 1], dense tissue bright; right breasts
        mirrored (chest wall on the right edge), left ones chest wall left.
    breast_mask : numpy.ndarray
        bool (H, W): everything inside the skin line, pectoral muscle
        included; the burned-in marker and artefact are outside it.
    dense_mask : numpy.ndarray
        bool (H, W): fibroglandular tissue (the "expert ROI").
    pectoral_mask : numpy.ndarray
        bool (H, W): pectoral muscle (all False on CC).
    density_class : int
        BI-RADS class 1..4 the dense fraction was drawn for.
    view, laterality : str
        ``"CC"``/``"MLO"`` and ``"L"``/``"R"``.
    dense_fraction : float
        ``dense_mask.sum() / (breast_mask & ~pectoral_mask).sum()``: the
        BI-RADS area share, which ignores the pectoral muscle.
    marker_bbox : tuple of int
        ``(r0, c0, r1, c1)`` of the burned-in text, half-open like slices.
    artifact_bbox : tuple of int or None
        ``(r0, c0, r1, c1)`` of the shortcut square, half-open; None if absent.
    """

    pixels: np.ndarray
    breast_mask: np.ndarray
    dense_mask: np.ndarray
    pectoral_mask: np.ndarray
    density_class: int
    view: str
    laterality: str
    dense_fraction: float
    marker_bbox: tuple[int, int, int, int]
    artifact_bbox: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class _Outline:
    """Breast outline in the canonical frame (chest wall at column 0)."""

    rho: np.ndarray  # normalised radius: < 1 inside the breast, 1 on the skin
    mask: np.ndarray
    nipple: tuple[float, float]  # (row, col)
    axis_end: tuple[float, float]  # where the nipple-chest axis meets the chest wall
    half_height: float  # pixels from the nipple axis to the lower skin (scale)


def make_phantom(
    density_class: int,
    view: str = "CC",
    laterality: str = "L",
    shape: tuple[int, int] = (1024, 832),
    *,
    seed=0,
    dense_fraction: float | None = None,
    breast_scale: float | None = None,
    shortcut: bool = False,
) -> Phantom:
    """Draw one phantom mammogram.

    Parameters
    ----------
    density_class : int
        BI-RADS density class 1..4.
    view : {"CC", "MLO"}
        MLO adds the pectoral muscle and an oblique, axilla-reaching outline.
    laterality : {"L", "R"}
        ``"R"`` is mirrored so its chest wall is on the right edge.
    shape : (int, int)
        (rows, cols); at least 64 x 48.
    seed : int, sequence of int or numpy.random.Generator
        Everything random comes from ``numpy.random.default_rng(seed)``.
    dense_fraction : float, optional
        Fibroglandular share of the breast (pectoral excluded). Default: drawn
        uniformly from ``TARGET_FRACTION_RANGES[density_class]``. Values
        outside the class's BI-RADS range are allowed (for experiments).
    breast_scale : float, optional
        Breast size relative to the image, about 0.75..1.0 (default: drawn).
    shortcut : bool
        Burn a bright square (about 3.5 % of the width) near the far bottom
        corner and record it in ``artifact_bbox``.

    Returns
    -------
    Phantom
    """
    rows, cols = check_phantom_arguments(density_class, view, laterality, shape, (64, 48))
    rng = np.random.default_rng(seed)
    if dense_fraction is None:
        dense_fraction = float(rng.uniform(*TARGET_FRACTION_RANGES[density_class]))
    if not 0.0 < dense_fraction < 1.0:
        raise ValueError(f"dense_fraction must be in (0, 1), got {dense_fraction!r}")
    if breast_scale is None:
        breast_scale = float(rng.uniform(0.78, 1.0))

    outline = _breast_outline(rng, (rows, cols), view, breast_scale)
    pectoral, pectoral_strength = _pectoral(rng, outline, view)
    skin = outline.mask & (outline.rho > 1.0 - _skin_width(outline, cols))
    tissue_region = outline.mask & ~pectoral
    source = _NoiseSource((rows, cols), rng)
    fine = source.field(2.2)
    score = _glandular_score(rng, source, fine, outline)
    dense, threshold = _threshold_to_fraction(
        score, tissue_region & ~skin, int(tissue_region.sum()), dense_fraction
    )
    patchy = source.field(3.0, corner=6.0, shift=rows // 3)
    pixels = _render(rng, outline, score, threshold, pectoral_strength, skin, fine, patchy)

    if laterality == "R":  # mirror before drawing text, so the text reads normally
        pixels, mask, dense, pectoral = (
            np.ascontiguousarray(a[:, ::-1]) for a in (pixels, outline.mask, dense, pectoral)
        )
    else:
        mask = outline.mask
    far_side = "right" if laterality == "L" else "left"
    marker_bbox = _burn_marker(pixels, mask, f"{laterality} {view}", far_side)
    artifact_bbox = None
    if shortcut:
        artifact_bbox = _burn_artifact(rng, pixels, far_side, marker_bbox)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    fraction = float(dense.sum()) / max(1, int((mask & ~pectoral).sum()))
    return Phantom(
        pixels=pixels,
        breast_mask=mask,
        dense_mask=dense,
        pectoral_mask=pectoral,
        density_class=int(density_class),
        view=view,
        laterality=laterality,
        dense_fraction=fraction,
        marker_bbox=marker_bbox,
        artifact_bbox=artifact_bbox,
    )


def check_phantom_arguments(density_class, view, laterality, shape, smallest: tuple[int, int]) -> tuple[int, int]:
    """Refuse what no phantom can be drawn for (``ValueError``); returns ``(rows, cols)``."""
    if density_class not in TARGET_FRACTION_RANGES:
        raise ValueError(f"density_class must be 1..4, got {density_class!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    rows, cols = (int(shape[0]), int(shape[1]))
    if rows < smallest[0] or cols < smallest[1]:
        raise ValueError(f"phantom shape must be at least {smallest[0]}x{smallest[1]}, got {rows}x{cols}")
    return rows, cols


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, corner: float = 2.0
) -> np.ndarray:
    """Gaussian noise with a ``1/f**beta`` power spectrum, zero mean, unit std.

    Parameters
    ----------
    shape : (int, int)
        Output shape.
    beta : float
        Spectral exponent: ~2 gives fine mottle, ~3 soft clouds.
    rng : numpy.random.Generator
    corner : float
        Spectrum flattens below ``corner`` cycles per image so no single
        image-sized blob dominates.

    Returns
    -------
    numpy.ndarray
        float32 array of `shape`.
    """
    return _NoiseSource(shape, rng).field(beta, corner)


class _NoiseSource:
    """One white-noise spectrum shaped into several power-law fields.

    Fields drawn from one source with the same `shift` share their random
    phases (they are correlated). A field drawn with a spectrum shifted by
    many frequency bins is practically independent of the others (white
    noise is i.i.d. across frequencies), at the cost of one inverse FFT
    instead of a normal draw plus two FFTs.
    """

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator):
        rows, cols = shape
        self.shape = shape
        self.spectrum = scipy.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
        fy = scipy.fft.fftfreq(rows).astype(np.float32)[:, None]
        fx = scipy.fft.rfftfreq(cols).astype(np.float32)[None, :]
        self.f2 = fy * fy + fx * fx
        self.scale = max(rows, cols)

    def field(self, beta: float, corner: float = 2.0, shift: int = 0) -> np.ndarray:
        f0 = np.float32(corner / self.scale)
        white = np.roll(self.spectrum, shift, axis=0) if shift else self.spectrum
        spectrum = white * (self.f2 + f0 * f0) ** np.float32(-beta / 4.0)
        spectrum[0, 0] = 0.0
        field = scipy.fft.irfft2(spectrum, s=self.shape).astype(np.float32, copy=False)
        field /= max(float(field.std()), 1e-12)
        return field


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def _breast_outline(
    rng: np.random.Generator, shape: tuple[int, int], view: str, scale: float
) -> _Outline:
    rows, cols = shape
    mlo = view == "MLO"
    centre = rows * (rng.uniform(0.52, 0.58) if mlo else rng.uniform(0.47, 0.53))
    depth = min(cols * 0.72 * scale * rng.uniform(0.95, 1.05), cols * 0.80)
    half_down = rows * (0.38 if mlo else 0.42) * scale * rng.uniform(0.96, 1.04)
    # MLO: the upper outline runs off the top edge (axillary tail)
    half_up = centre / rng.uniform(0.66, 0.74) if mlo else half_down * rng.uniform(0.95, 1.05)
    tilt = rng.uniform(0.10, 0.22) if mlo else rng.uniform(-0.04, 0.04)
    exponent = rng.uniform(1.8, 2.3)  # 2 = ellipse; lower = pointier nipple
    harmonics = [(k, rng.uniform(0.0, 0.025), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]

    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(cols, dtype=np.float32)[None, :]
    x = np.broadcast_to(c / np.float32(depth), (rows, cols))
    y = (r - np.float32(centre)) - np.float32(tilt * half_down) * x
    y = np.where(y < 0, y / np.float32(half_up), y / np.float32(half_down))
    theta = np.arctan2(y, x)
    modulation = np.ones_like(theta)
    for k, amplitude, phase in harmonics:
        modulation += np.float32(amplitude) * np.cos(k * theta + np.float32(phase))
    rho = np.sqrt(np.abs(x) ** np.float32(exponent) + y * y) / modulation
    mask = rho <= 1.0

    nipple = (centre + tilt * half_down, depth * (1.0 + sum(a * np.cos(p) for _, a, p in harmonics)))
    axis_end = (centre - (0.25 * rows if mlo else 0.0), 0.0)
    return _Outline(rho=rho, mask=mask, nipple=nipple, axis_end=axis_end, half_height=half_down)


def _pectoral(
    rng: np.random.Generator, outline: _Outline, view: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pectoral triangle in the chest-wall top corner (MLO only).

    Returns the mask and a soft 0..1 membership used for rendering.
    """
    rows, cols = outline.mask.shape
    if view != "MLO":
        return np.zeros((rows, cols), dtype=bool), None
    top_width = int(outline.mask[0].sum())
    width = min(cols * rng.uniform(0.24, 0.34), 0.8 * top_width)
    height = rows * rng.uniform(0.38, 0.55)
    bulge = rng.uniform(1.0, 1.25)  # > 1: edge bows into the breast, as usual
    r = np.arange(rows, dtype=np.float32)[:, None] / np.float32(height)
    c = np.arange(cols, dtype=np.float32)[None, :] / np.float32(width)
    level = r ** np.float32(bulge) + c ** np.float32(bulge)
    mask = (level < 1.0) & outline.mask
    soft = special.expit((1.0 - level) / np.float32(0.015))
    return mask, soft.astype(np.float32) * outline.mask


def _skin_width(outline: _Outline, cols: int) -> float:
    """Skin-line thickness in units of the normalised radius."""
    pixels = max(1.0, 0.004 * cols)
    return pixels / max(outline.half_height, 1.0)


# ---------------------------------------------------------------------------
# tissue
# ---------------------------------------------------------------------------


def _glandular_score(
    rng: np.random.Generator, source: _NoiseSource, fine: np.ndarray, outline: _Outline
) -> np.ndarray:
    """Where glandular tissue grows first: cloud noise plus anatomy prior.

    `fine` (the mottle of the same source) roughens the cloud edges.
    """
    rows, cols = source.shape
    cloud = source.field(rng.uniform(2.7, 3.2), corner=rng.uniform(2.0, 4.0))
    cloud += np.float32(0.35) * fine
    # distance from the nipple-chest axis, in units of the breast half height
    (rn, cn), (ra, ca) = outline.nipple, outline.axis_end
    dr, dc = rn - ra, cn - ca
    norm = float(np.hypot(dr, dc)) or 1.0
    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(cols, dtype=np.float32)[None, :]
    off_axis = ((r - np.float32(ra)) * np.float32(dc) - (c - np.float32(ca)) * np.float32(dr)) / np.float32(
        norm * outline.half_height
    )
    axis_prior = -((off_axis / np.float32(0.6)) ** 2)
    # subcutaneous fat: glandular tissue keeps away from the skin
    depth = np.clip((1.0 - outline.rho) / np.float32(0.18), 0.0, 1.0)
    skin_prior = -2.0 * (1.0 - depth) ** 2
    weight = np.float32(rng.uniform(0.7, 1.0))
    return cloud + weight * (axis_prior + skin_prior)


def _threshold_to_fraction(
    score: np.ndarray, allowed: np.ndarray, breast_area: int, fraction: float
) -> tuple[np.ndarray, float]:
    """Dense mask = the top ``fraction * breast_area`` scores inside `allowed`."""
    values = score[allowed]
    count = int(round(fraction * breast_area))
    count = min(max(count, 1), values.size)
    if values.size == 0:
        return np.zeros_like(allowed), float("inf")
    threshold = float(np.partition(values, values.size - count)[values.size - count])
    return allowed & (score >= threshold), threshold


def _render(
    rng: np.random.Generator,
    outline: _Outline,
    score: np.ndarray,
    threshold: float,
    pectoral_strength: np.ndarray | None,
    skin: np.ndarray,
    fine: np.ndarray,
    patchy: np.ndarray,
) -> np.ndarray:
    """Display intensities (dense bright) in the canonical frame.

    `fine` and `patchy` are unit-std texture fields (mottle, slow patches).
    """
    shape = score.shape
    air = np.float32(rng.uniform(0.0, 0.03))
    fat = np.float32(rng.uniform(0.22, 0.30))
    contrast = np.float32(rng.uniform(0.32, 0.42))
    spread = np.float32(0.2 * max(float(score.std()), 1e-6))

    # glandular membership: 0.5 on the mask border, fading in a soft halo
    glandular = special.expit((score - np.float32(threshold)) / spread)
    # dense tissue is not uniformly bright: slow variation plus fine mottle
    tissue = fat + np.float32(0.02) * fine
    tissue += (
        contrast
        * glandular
        * (np.float32(0.85) + np.float32(0.08) * patchy + np.float32(0.07) * fine)
    )
    tissue += np.float32(0.03) * _radial_streaks(rng, outline, shape)
    if pectoral_strength is not None:
        gradient = np.clip(1.0 - outline.rho, 0.0, 1.0)  # brighter towards the corner
        muscle = np.float32(rng.uniform(0.50, 0.60)) + np.float32(0.08) * gradient
        muscle += np.float32(0.02) * fine + np.float32(0.03) * patchy
        tissue += pectoral_strength * (muscle - tissue)
    # thinner compressed breast towards the skin: darker periphery
    thickness = np.clip((1.0 - outline.rho) / np.float32(rng.uniform(0.10, 0.18)), 0.0, 1.0)
    tissue = air + (tissue - air) * (np.float32(0.35) + np.float32(0.65) * np.sqrt(thickness))
    tissue += np.float32(0.12) * skin
    pixels = np.where(outline.mask, tissue, air).astype(np.float32)
    # quantum-like noise: variance proportional to the signal
    sigma = np.float32(rng.uniform(0.008, 0.014))
    pixels += sigma * np.sqrt(np.maximum(pixels, 0.0) + np.float32(0.02)) * rng.standard_normal(
        shape, dtype=np.float32
    )
    return np.clip(pixels, 0.0, 1.0)


def _radial_streaks(rng: np.random.Generator, outline: _Outline, shape: tuple[int, int]) -> np.ndarray:
    """Faint ligament/duct streaks converging on the nipple.

    Sampled on a half-resolution grid and repeated: the streaks are smooth
    and faint, and this is a third of the phantom's cost at full resolution.
    """
    rows, cols = shape
    n_angle, n_radius = 256, 16
    polar = power_law_noise((n_angle, n_radius), 2.0, rng, corner=1.0)
    rn, cn = outline.nipple
    r = np.arange(0, rows, 2, dtype=np.float32)[:, None] - np.float32(rn)
    c = np.arange(0, cols, 2, dtype=np.float32)[None, :] - np.float32(cn)
    angle = (np.arctan2(r, c) + np.float32(np.pi)) * np.float32(n_angle / (2 * np.pi))
    radius = np.sqrt(r * r + c * c) * np.float32(n_radius / max(rows, cols))
    half = ndimage.map_coordinates(polar, [angle, radius], order=1, mode="grid-wrap")
    full = np.repeat(np.repeat(half.astype(np.float32), 2, axis=0), 2, axis=1)
    return full[:rows, :cols]


# ---------------------------------------------------------------------------
# burned-in marker and shortcut artefact
# ---------------------------------------------------------------------------


def render_text(text: str, scale: int = 1) -> np.ndarray:
    """Bool bitmap of `text` in the built-in 5x7 font (letters L R C M O, space).

    Parameters
    ----------
    text : str
    scale : int
        Integer magnification.

    Returns
    -------
    numpy.ndarray
        bool (7 * scale, width * scale).
    """
    columns = []
    for i, char in enumerate(text.upper()):
        if char not in _GLYPHS:
            raise ValueError(f"no glyph for {char!r}; the marker font has {sorted(_GLYPHS)}")
        if i:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(np.array([[ch == "#" for ch in line] for line in _GLYPHS[char]]))
    bitmap = np.concatenate(columns, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


def _burn_marker(
    pixels: np.ndarray, breast: np.ndarray, text: str, side: str
) -> tuple[int, int, int, int]:
    """Burn `text` into the top (else bottom) far corner, clear of the breast.

    Clear of the breast (by a 2 % margin) at every size from 128 x 104 up;
    in tiny images (64 x 48 MLO) the text may touch the breast outline.
    """
    rows, cols = pixels.shape
    margin = max(2, int(round(0.02 * cols)))
    scale = max(1, int(round(0.025 * rows / 7)))
    bitmap = render_text(text, scale)
    while scale > 1 and bitmap.shape[1] > 0.4 * cols:  # tall narrow images: keep it in a corner
        scale -= 1
        bitmap = render_text(text, scale)
    height, width = bitmap.shape
    c0 = cols - margin - width if side == "right" else margin
    clearance = ndimage.binary_dilation(breast, iterations=margin) if margin else breast
    candidates = [(margin, c0), (rows - margin - height, c0)]
    r0 = candidates[0][0]
    for top, left in candidates:
        if not clearance[top : top + height, left : left + width].any():
            r0 = top
            break
    pixels[r0 : r0 + height, c0 : c0 + width][bitmap] = 1.0
    return (r0, c0, r0 + height, c0 + width)


def _burn_artifact(
    rng: np.random.Generator,
    pixels: np.ndarray,
    side: str,
    marker_bbox: tuple[int, int, int, int],
) -> tuple[int, int, int, int]:
    """Bright filled square near the far corner not used by the marker."""
    rows, cols = pixels.shape
    size = max(3, int(round(0.035 * cols)))
    margin = int(round(0.03 * cols + rng.uniform(0.0, 0.02) * cols))
    marker_on_top = marker_bbox[0] < rows // 2
    r0 = rows - margin - size if marker_on_top else margin
    c0 = cols - margin - size if side == "right" else margin
    value = np.float32(rng.uniform(0.95, 1.0))
    pixels[r0 : r0 + size, c0 : c0 + size] = value
    return (r0, c0, r0 + size, c0 + size)
