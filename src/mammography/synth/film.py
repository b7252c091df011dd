"""One scanned-film phantom: what digitised screen-film mammograms look like.

Digitised film archives (the CBIS-DDSM kind) differ from the clean phantoms
of :mod:`mammography.synth.phantom` in ways that break code tuned on a clean
world, so this phantom reproduces them, each with its ground truth:

* the film background is a constant scanner level: after any percentile
  window it is exactly 0, without noise;
* the compressed breast thins towards the skin, so its periphery fades to
  3-15 % of the breast's intensity (``periphery``), and on CC views the
  nipple stands out in profile beyond the outline (``nipple``);
* bright film-edge strips (the unexposed film frame) run along some borders
  with ragged inner edges, sometimes along the chest wall or the top of an
  MLO view where they touch the breast and the pectoral muscle; pixels under
  a strip are strip, not breast (``edge_mask``, ``edge_sides``);
* a burned-in multi-letter label ("LCC", "RMLO") whose box covers 2-4 % of
  the image, scanned (soft edges), in a corner away from the chest wall and
  often right next to a strip (``label_mask``, ``label_bbox``);
* strips and labels are about as bright as the densest tissue, sometimes
  brighter, sometimes not (so a window over the whole film can saturate
  the densest tissue).

The breast itself (outline, pectoral muscle on MLO, fibroglandular tissue at
the class's area share) is drawn by the same functions as the clean phantom.
Pixel values are display intensities, dense bright, background 0; strips may
exceed 1 (the scanner saturates them when the file is written).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from mammography.synth.phantom import (
    TARGET_FRACTION_RANGES,
    _breast_outline,
    _glandular_score,
    _NoiseSource,
    _pectoral,
    _radial_streaks,
    _threshold_to_fraction,
    check_phantom_arguments,
    render_text,
)

__all__ = ["FilmPhantom", "make_film_phantom", "EDGE_SIDES", "DEFAULT_FILM_SIZE"]

#: (rows, cols) of a film phantom by default: the aspect of a 4500 x 2800 scan
DEFAULT_FILM_SIZE = (1024, 640)
EDGE_SIDES = ("top", "bottom", "left", "right")
#: target share of the image covered by the label's box
LABEL_AREA_RANGE = (0.02, 0.04)
#: faint periphery: intensity at the skin line relative to the breast's median
PERIPHERY_RANGE = (0.03, 0.15)


@dataclass(frozen=True)
class FilmPhantom:
    """A film-style phantom and its ground truth, in display orientation.

    Attributes
    ----------
    pixels : float32 (H, W), display intensity, dense bright, background
        exactly 0; film-edge strips may exceed 1.
    breast_mask : bool, everything inside the skin line (nipple and pectoral
        muscle included), strips excluded.
    dense_mask : bool, fibroglandular tissue.
    pectoral_mask : bool, pectoral muscle (all False on CC).
    label_mask : bool, pixels of the burned-in label's letters.
    edge_mask : bool, film-edge strips.
    density_class, view, laterality : as for :class:`~mammography.synth.Phantom`.
    dense_fraction : dense area over the breast area without the pectoral muscle.
    label_text : the label's text, e.g. ``"RMLO"``.
    label_bbox : ``(r0, c0, r1, c1)`` of the label's box, half-open.
    edge_sides : the borders carrying a strip.
    periphery : intensity at the skin line over the breast's median intensity.
    nipple : ``(row, col)`` of the nipple tip in profile, or None (MLO views
        without a nipple in profile).
    """

    pixels: np.ndarray
    breast_mask: np.ndarray
    dense_mask: np.ndarray
    pectoral_mask: np.ndarray
    label_mask: np.ndarray
    edge_mask: np.ndarray
    density_class: int
    view: str
    laterality: str
    dense_fraction: float
    label_text: str
    label_bbox: tuple[int, int, int, int]
    edge_sides: tuple[str, ...]
    periphery: float
    nipple: tuple[int, int] | None


def make_film_phantom(
    density_class: int,
    view: str = "CC",
    laterality: str = "L",
    shape: tuple[int, int] = DEFAULT_FILM_SIZE,
    *,
    seed=0,
    dense_fraction: float | None = None,
    breast_scale: float | None = None,
    edge_sides: tuple[str, ...] | None = None,
) -> FilmPhantom:
    """Draw one film-style phantom mammogram.

    Parameters
    ----------
    density_class : BI-RADS density class 1..4.
    view : ``"CC"`` or ``"MLO"``.
    laterality : ``"L"`` or ``"R"`` (right breasts are mirrored: chest wall on the right).
    shape : (rows, cols), at least 128 x 80.
    seed : anything :func:`numpy.random.default_rng` accepts; fixes the phantom bit for bit.
    dense_fraction : fibroglandular share (default: drawn from the class's range).
    breast_scale : breast size relative to the image, about 0.6..1.0 (default: drawn from
        0.62..0.85: a film is larger than the breast, so half or more of it is background).
    edge_sides : borders that get a film-edge strip (default: drawn; a
        border of the chest wall or, on MLO, the top gets one more often
        than on clean films it would, so strips touch the breast often).

    Returns
    -------
    FilmPhantom
    """
    rows, cols = check_phantom_arguments(density_class, view, laterality, shape, (128, 80))
    if edge_sides is not None and not set(edge_sides) <= set(EDGE_SIDES):
        raise ValueError(f"edge_sides must be among {EDGE_SIDES}, got {edge_sides!r}")
    rng = np.random.default_rng(seed)
    if dense_fraction is None:
        dense_fraction = float(rng.uniform(*TARGET_FRACTION_RANGES[density_class]))
    if breast_scale is None:
        breast_scale = float(rng.uniform(0.62, 0.85))

    outline = _breast_outline(rng, (rows, cols), view, breast_scale)
    nipple_mask, nipple = _nipple(rng, outline, view)
    breast = outline.mask | nipple_mask
    pectoral, pectoral_strength = _pectoral(rng, outline, view)
    tissue_region = outline.mask & ~pectoral
    source = _NoiseSource((rows, cols), rng)
    fine = source.field(2.2)
    score = _glandular_score(rng, source, fine, outline)
    if pectoral.any():  # retroglandular fat: glandular tissue keeps a little away from the muscle
        gap = ndimage.distance_transform_edt(~pectoral).astype(np.float32)
        score -= np.float32(3.0) * np.exp(-gap / np.float32(0.03 * cols))
    skin = outline.mask & (outline.rho > 0.97)
    dense, threshold = _threshold_to_fraction(score, tissue_region & ~skin, int(tissue_region.sum()), dense_fraction)
    periphery = float(rng.uniform(*PERIPHERY_RANGE))
    pixels = _render_film(rng, outline, breast, score, threshold, pectoral_strength, fine, source, periphery)

    if laterality == "R":
        pixels, breast, dense, pectoral = (np.ascontiguousarray(a[:, ::-1]) for a in (pixels, breast, dense, pectoral))
        if nipple is not None:
            nipple = (nipple[0], cols - 1 - nipple[1])
    chest_side = "left" if laterality == "L" else "right"
    far_side = "right" if laterality == "L" else "left"
    bright = float(np.percentile(pixels[breast], 99.5))
    if edge_sides is None:
        edge_sides = _draw_edge_sides(rng, view, chest_side)
    edges = np.zeros((rows, cols), dtype=bool)
    beyond_film = np.zeros((rows, cols), dtype=bool)
    for side in EDGE_SIDES:  # fixed order: the same sides give the same pixels
        if side in edge_sides:
            beyond_film |= _burn_edge_strip(rng, pixels, edges, side, bright)
    breast &= ~beyond_film
    dense &= ~beyond_film
    pectoral &= ~beyond_film

    text = f"{laterality}{view}" if rng.random() < 0.7 else f"{laterality} {view}"
    label_mask, label_bbox = _burn_label(rng, pixels, breast, edges, text, far_side, bright)
    fraction = float(dense.sum()) / max(1, int((breast & ~pectoral).sum()))
    return FilmPhantom(
        pixels=pixels.astype(np.float32),
        breast_mask=breast,
        dense_mask=dense,
        pectoral_mask=pectoral,
        label_mask=label_mask,
        edge_mask=edges,
        density_class=int(density_class),
        view=view,
        laterality=laterality,
        dense_fraction=fraction,
        label_text=text,
        label_bbox=label_bbox,
        edge_sides=tuple(s for s in EDGE_SIDES if s in edge_sides),
        periphery=periphery,
        nipple=nipple,
    )


# ---------------------------------------------------------------------------
# the breast
# ---------------------------------------------------------------------------


def _nipple(rng: np.random.Generator, outline, view: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The nipple in profile: a small cap beyond the outline at the nipple point.

    Always on CC views, on a third of MLO views (positioning often hides it).
    """
    rows, cols = outline.mask.shape
    if view == "MLO" and rng.random() >= 1 / 3:
        return np.zeros((rows, cols), dtype=bool), None
    rn, cn = outline.nipple
    ry = rows * rng.uniform(0.014, 0.022)
    rx = rows * rng.uniform(0.012, 0.020)
    # walk along the nipple row to where the outline really ends (the harmonics move it)
    row = int(np.clip(round(rn), 0, rows - 1))
    inside = np.flatnonzero(outline.mask[row])
    edge = float(inside.max()) if inside.size else cn
    centre = edge - 0.35 * rx
    r = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(cols, dtype=np.float32)[None, :]
    cap = ((r - np.float32(rn)) / np.float32(ry)) ** 2 + ((c - np.float32(centre)) / np.float32(rx)) ** 2 <= 1.0
    tip = (row, int(min(cols - 1, np.floor(centre + rx))))
    return cap, tip


def _render_film(
    rng: np.random.Generator,
    outline,
    breast: np.ndarray,
    score: np.ndarray,
    threshold: float,
    pectoral_strength: np.ndarray | None,
    fine: np.ndarray,
    source: _NoiseSource,
    periphery: float,
) -> np.ndarray:
    """Display intensities in the canonical frame: tissue fading to ``periphery`` at the skin, background 0."""
    shape = score.shape
    fat = np.float32(rng.uniform(0.22, 0.30))
    contrast = np.float32(rng.uniform(0.30, 0.42))
    spread = np.float32(0.2 * max(float(score.std()), 1e-6))
    patchy = source.field(3.0, corner=6.0, shift=shape[0] // 3)
    glandular = special.expit((score - np.float32(threshold)) / spread)
    tissue = fat + np.float32(0.02) * fine
    tissue += contrast * glandular * (np.float32(0.85) + np.float32(0.08) * patchy + np.float32(0.07) * fine)
    tissue += np.float32(0.03) * _radial_streaks(rng, outline, shape)
    if pectoral_strength is not None:
        gradient = np.clip(1.0 - outline.rho, 0.0, 1.0)
        muscle = np.float32(rng.uniform(0.60, 0.70)) + np.float32(0.08) * gradient
        muscle += np.float32(0.02) * fine + np.float32(0.03) * patchy
        tissue += pectoral_strength * (muscle - tissue)
    # the compressed breast thins towards the skin; beyond the outline (the
    # nipple) it stays at the skin's level
    thickness = np.clip((1.0 - outline.rho) / np.float32(rng.uniform(0.08, 0.16)), 0.0, 1.0)
    median = float(np.median(tissue[breast]))
    near_skin = breast & (thickness < 0.05)
    skin_tissue = float(np.median(tissue[near_skin])) if near_skin.any() else median
    # near the skin the tissue is fat: scale the profile so the skin sits at `periphery` of the breast's median
    floor = np.float32(min(1.0, periphery * median / max(skin_tissue, 1e-6)))
    tissue = tissue * (floor + (np.float32(1.0) - floor) * np.sqrt(thickness))
    # scanner noise inside the film's exposed area only
    sigma = np.float32(rng.uniform(0.004, 0.008))
    tissue += sigma * np.sqrt(np.maximum(tissue, 0.0) + np.float32(0.01)) * rng.standard_normal(shape, dtype=np.float32)
    faintest = np.float32(0.5 * periphery * median)  # every breast pixel stays above the film base
    return np.where(breast, np.maximum(tissue, faintest), np.float32(0.0)).astype(np.float32)


# ---------------------------------------------------------------------------
# film edges and the label
# ---------------------------------------------------------------------------


def _draw_edge_sides(rng: np.random.Generator, view: str, chest_side: str) -> tuple[str, ...]:
    chance = {"top": 0.35, "bottom": 0.35, "left": 0.3, "right": 0.3}
    chance[chest_side] = 0.4  # a strip along the chest wall touches the breast
    if view == "MLO":
        chance["top"] = 0.45  # ... and so does one along the top of an MLO view (axilla, pectoral)
    return tuple(side for side in EDGE_SIDES if rng.random() < chance[side])


def _burn_edge_strip(
    rng: np.random.Generator, pixels: np.ndarray, edges: np.ndarray, side: str, bright: float
) -> np.ndarray:
    """A bright band along ``side``: ragged inner edge, nearly uniform, sometimes a dark gap to the border.

    Returns the pixels between the strip's inner edge and the border (strip and gap), where no breast is.
    """
    rows, cols = pixels.shape
    length, across = (cols, rows) if side in ("top", "bottom") else (rows, cols)
    width = across * rng.uniform(0.012, 0.035)
    gap = int(round(across * rng.uniform(0.0, 0.008))) if rng.random() < 0.3 else 0
    # a strip covers most of its side; it may stop short of one corner
    start = int(round(length * (rng.uniform(0.0, 0.2) if rng.random() < 0.3 else 0.0)))
    stop = length - int(round(length * (rng.uniform(0.0, 0.2) if rng.random() < 0.3 else 0.0)))
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(length), sigma=max(2.0, length / 40), mode="wrap")
    wobble /= max(float(np.abs(wobble).max()), 1e-9)
    depth = gap + width * (1.0 + 0.35 * wobble)
    across_index = np.arange(across)[:, None]
    frame = across_index < depth[None, :]  # the film frame and, before it, the scanner's margin
    frame[:, :start] = False
    frame[:, stop:] = False
    band = frame & (across_index >= gap)
    level = bright * rng.uniform(0.7, 1.3)
    along = np.linspace(-1.0, 1.0, length)[None, :]
    values = level * (1.0 + 0.02 * along) + 0.003 * rng.standard_normal(band.shape)
    region, vals, outside = (
        (band, values, frame) if side in ("top", "bottom") else (band.T, values.T, frame.T)
    )
    if side == "bottom":
        region, vals, outside = region[::-1], vals[::-1], outside[::-1]
    if side == "right":
        region, vals, outside = region[:, ::-1], vals[:, ::-1], outside[:, ::-1]
    pixels[outside] = 0.0  # no film between the frame and the image border
    pixels[region] = vals[region].astype(np.float32)
    edges |= region
    return outside


def _burn_label(
    rng: np.random.Generator,
    pixels: np.ndarray,
    breast: np.ndarray,
    edges: np.ndarray,
    text: str,
    far_side: str,
    bright: float,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Burn ``text`` large (box 2-4 % of the image) into a far corner, clear of the breast.

    Next to a strip when one runs along the corner's borders, else a small
    margin away from them. Shrinks the letters when no corner has room.
    """
    rows, cols = pixels.shape
    target = rng.uniform(*LABEL_AREA_RANGE) * rows * cols
    unit = render_text(text, 1)
    exact = np.sqrt(target / unit.size)
    # the integer letter size whose box is nearest the target, preferring one inside the 2-4 % range
    candidates = sorted({max(1, int(np.floor(exact))), max(1, int(np.ceil(exact)))},
                        key=lambda s: (not LABEL_AREA_RANGE[0] <= unit.size * s * s / (rows * cols) <= LABEL_AREA_RANGE[1],
                                       abs(unit.size * s * s - target)))
    scale = candidates[0]
    clearance = ndimage.binary_dilation(breast, iterations=max(2, int(0.05 * cols)))
    corners = ["top", "bottom"] if rng.random() < 0.5 else ["bottom", "top"]
    while True:
        bitmap = render_text(text, scale)
        height, width = bitmap.shape
        for vertical in corners:
            r0, c0 = _corner_position(rng, edges, (height, width), vertical, far_side)
            if r0 < 0 or c0 < 0 or r0 + height > rows or c0 + width > cols:
                continue
            box = (slice(r0, r0 + height), slice(c0, c0 + width))
            if not clearance[box].any() and not edges[box].any():
                soft = ndimage.gaussian_filter(bitmap.astype(np.float32), sigma=max(0.5, 0.3 * scale))
                soft[soft < 0.02] = 0.0  # the scan's blur, without a faint halo over the whole box
                value = np.float32(bright * rng.uniform(0.75, 1.2))
                glyphs = soft > 0.25
                pixels[box] = np.maximum(pixels[box], value * np.clip(soft * 1.6, 0.0, 1.0))
                mask = np.zeros((rows, cols), dtype=bool)
                mask[box] = glyphs
                return mask, (r0, c0, r0 + height, c0 + width)
        if scale == 1:
            return np.zeros((rows, cols), dtype=bool), (0, 0, 0, 0)
        scale -= 1


def _corner_position(
    rng: np.random.Generator, edges: np.ndarray, size: tuple[int, int], vertical: str, horizontal: str
) -> tuple[int, int]:
    """Top-left of a box of ``size`` in a corner: just inside any strip there, else a margin from the border."""
    rows, cols = edges.shape
    height, width = size

    def inset(strip_lines: np.ndarray, extent: int) -> int:
        # lines of strip from the border inwards, then a gap of 0.5-2 % of the extent
        strip = int(np.flatnonzero(strip_lines).max()) + 1 if strip_lines.any() else 0
        return strip + int(round(extent * (rng.uniform(0.005, 0.02) if strip else rng.uniform(0.01, 0.04))))

    columns = edges.mean(axis=0) > 0.3  # columns that are mostly strip (left/right strips)
    lines = edges.mean(axis=1) > 0.3  # rows that are mostly strip (top/bottom strips)
    quarter_c, quarter_r = max(1, cols // 4), max(1, rows // 4)
    side_cols = columns[:quarter_c] if horizontal == "left" else columns[::-1][:quarter_c]
    side_rows = lines[:quarter_r] if vertical == "top" else lines[::-1][:quarter_r]
    from_side, from_edge = inset(side_cols, cols), inset(side_rows, rows)
    r0 = from_edge if vertical == "top" else rows - from_edge - height
    c0 = from_side if horizontal == "left" else cols - from_side - width
    return int(r0), int(c0)
