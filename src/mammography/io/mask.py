"""Breast, film-edge and pectoral masks from the pixels alone.

A mammogram is a bright breast against a darker background that may carry
burned-in labels and, on digitised film, bright film-edge strips (the
unexposed frame) along some borders, sometimes touching the breast. All
masks are computed on a copy block-averaged until its longer side is at most
``max_work_side`` pixels (averaging also suppresses noise) and brought back
to full resolution (nearest neighbour).

:func:`breast_mask`

1. smooth with a 3x3 mean;
2. find the film-edge strips (:func:`film_edge_mask`) and leave them out;
3. threshold *relative to the background level*: the background is the
   median of Otsu's dark class, its noise that class's robust spread; the
   threshold lies 4 noise deviations above it, and at least 1 % of the way
   from the background to the tissue (median of Otsu's bright class). On
   digitised film the windowed background is exactly 0 and the thinning
   periphery fades to 3-15 % of the breast's intensity, so a threshold
   placed as a fraction of Otsu's would stop well inside the skin line;
4. a 3x3 opening cuts one-pixel bridges (a label touching the skin line
   through noise); the largest connected component is the breast, every
   other component (labels, markers, collimator edges) is dropped;
5. two steps of growth back into the unopened foreground restore what the
   opening shaved off the breast (the nipple in profile, the skin line);
6. holes are filled (dark fat enclosed by tissue is still breast).

:func:`film_edge_mask` finds strips as bands of lines (rows near the top or
bottom border, columns near the left or right one) in which at least 60 % of
the pixels are bright and flat along the border (their local spread is well
below that of the bright tissue inside the image: breast tissue as bright
and as extended along the chest wall has texture), starting at most 2 % of
the image (3 px) from the border; each strip then grows inwards, line by line
at every position along the border, while the pixels stay bright and flat
(the ragged inner edge), never deeper than twice its solid part.

:func:`pectoral_mask` finds the pectoral muscle of an MLO view: the bright
wedge in the chest-wall corner at the top of the breast, bounded by the
steepest fall of intensity along each row, fitted robustly by a quadratic
curve. :func:`chest_wall_side` says which border the breast rests on.

:func:`read_mask_file` reads the mask files that come with a data set
(expert regions, breast masks): regular files only, sizes checked from the
header like mammograms, every failure one ImageReadError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mammography.errors import ConfigError, ImageReadError, printable
from mammography.io.files import require_regular_file
from mammography.io.mammogram import check_dimensions

__all__ = [
    "BreastSegmentation",
    "breast_mask",
    "chest_wall_side",
    "film_edge_mask",
    "otsu_threshold",
    "pectoral_mask",
    "read_mask_cell",
    "read_mask_file",
    "segment_breast",
]

#: smallest step from background to tissue that the threshold keeps (share of the way)
_MIN_STEP = 0.01
#: a strip line has at least this share of its pixels at the strip's level
_EDGE_COVERAGE = 0.6
#: ... and those pixels are flat along the border: their local standard deviation is at most this share of
#: the image's range (and at most 0.3 of the bright tissue's own)
_EDGE_FLATNESS = 0.005
#: a thin (low-resolution) strip: bright, shallow runs from the border at this share of the positions,
#: with one unbroken stretch of at least _THIN_STRETCH of the border
_THIN_COVERAGE = 0.4
_THIN_STRETCH = 0.3
#: a strip starts at most this share of the image side away from its border
_EDGE_MAX_GAP = 0.02
#: a strip is at most this share of the image side deep
_EDGE_MAX_DEPTH = 0.1


@dataclass(frozen=True)
class BreastSegmentation:
    """The masks of one image, full resolution.

    Attributes
    ----------
    breast : bool (H, W), the breast up to the skin line (nipple kept,
        film-edge strips and labels left out).
    film_edges : bool (H, W), film-edge strips along the borders.
    edge_sides : borders carrying a strip, among ``"top"``, ``"bottom"``,
        ``"left"``, ``"right"``.
    chest_wall : ``"left"``, ``"right"`` or None (:func:`chest_wall_side`).
    """

    breast: np.ndarray
    film_edges: np.ndarray
    edge_sides: tuple[str, ...]
    chest_wall: str | None


def segment_breast(pixels: np.ndarray, *, max_work_side: int = 512) -> BreastSegmentation:
    """Breast mask, film-edge strips and the chest-wall side of one image in one pass.

    Parameters
    ----------
    pixels : np.ndarray
        2-D image (H, W), dense tissue bright, values in [0, 1] as produced
        by :func:`~mammography.io.read_mammogram` (any real dtype; larger
        values, e.g. a raw film strip above 1, are accepted).
    max_work_side : int
        The image is block-averaged by an integer factor until its longer
        side is at most this many pixels; the mask edges are then accurate
        to about half that factor. Larger values are slower and finer.

    Returns
    -------
    BreastSegmentation

    Raises
    ------
    ConfigError
        When ``pixels`` is not 2-D or ``max_work_side`` < 16.
    """
    x = _check_image(pixels, max_work_side)
    work, factor = _work_image(x, max_work_side)
    edges, sides = _film_edges(work)
    breast, threshold = _breast(work, edges)
    full_edges = _upsample(edges, factor, x.shape)
    return BreastSegmentation(
        breast=_refine_boundary(x, breast, factor, threshold, full_edges),
        film_edges=full_edges,
        edge_sides=sides,
        chest_wall=chest_wall_side(breast),
    )



def read_mask_file(path: str | Path, what: str = "mask") -> np.ndarray:
    """A mask image (PNG, TIFF ...; nonzero = inside, as displayed) as a bool array.

    Raises
    ------
    ImageReadError
        Missing, not a regular file, implausible size, or not a readable image.
    """
    from PIL import Image

    require_regular_file(path, what, ImageReadError, "fix the path in the manifest or leave the column empty")
    try:
        with Image.open(path) as im:
            check_dimensions(Path(path), im.height, im.width)
            arr = np.asarray(im.convert("L"))
    except ImageReadError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read the {what} {printable(path)} ({printable(exc)}); save it as an 8-bit "
                             "PNG") from None
    return arr > 0


def read_mask_cell(value, what: str = "mask") -> np.ndarray | None:
    """:func:`read_mask_file` of a manifest or predictions cell; None when the cell is empty
    (None, NaN, blank or ``"nan"``: the image has no such mask)."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan"):
        return None
    return read_mask_file(str(value), what)


def breast_mask(pixels: np.ndarray, *, max_work_side: int = 512) -> np.ndarray:
    """Segment the breast in a mammogram with dense tissue bright.

    Parameters
    ----------
    pixels : np.ndarray
        2-D image (H, W), values in [0, 1] as produced by
        :func:`~mammography.io.read_mammogram` (any real dtype is accepted).
    max_work_side : int
        The image is block-averaged by an integer factor until its longer
        side is at most this many pixels before segmenting; the mask edge is
        then accurate to about half that factor (1 px at 1024 x 832 with the
        default). Larger values are slower and finer.

    Returns
    -------
    np.ndarray
        bool (H, W): True on the breast (to the skin line, nipple included;
        film-edge strips and labels excluded). All False for a constant image.

    Raises
    ------
    ConfigError
        When ``pixels`` is not 2-D or ``max_work_side`` < 16.
    """
    return segment_breast(pixels, max_work_side=max_work_side).breast


def film_edge_mask(pixels: np.ndarray, *, max_work_side: int = 512) -> np.ndarray:
    """Bright film-edge strips along the image borders (module docstring), bool (H, W).

    All False when there is none (every full-field digital mammogram).
    """
    x = _check_image(pixels, max_work_side)
    work, factor = _work_image(x, max_work_side)
    return _upsample(_film_edges(work)[0], factor, x.shape)


def chest_wall_side(breast: np.ndarray) -> str | None:
    """The border the breast rests on: ``"left"``, ``"right"`` or None (no breast).

    The breast is cut by the image at the chest wall, so the left or right
    border column band (2 % of the width) that holds more of the breast is the
    chest wall; when neither touches the breast, the side holding most of the
    breast's area (the breast is widest at the chest wall).
    """
    b = np.asarray(breast, dtype=bool)
    if b.ndim != 2 or not b.any():
        return None
    band = max(1, int(round(0.02 * b.shape[1])))
    left, right = int(b[:, :band].sum()), int(b[:, -band:].sum())
    if left != right:
        return "left" if left > right else "right"
    columns = b.sum(axis=0).astype(np.float64)
    centre = float((columns * np.arange(b.shape[1])).sum() / columns.sum())
    if centre == (b.shape[1] - 1) / 2:
        return None
    return "left" if centre < (b.shape[1] - 1) / 2 else "right"


def pectoral_mask(
    pixels: np.ndarray,
    breast: np.ndarray | None = None,
    *,
    chest_wall: str | None = None,
    view: str | None = None,
    max_work_side: int = 512,
) -> np.ndarray:
    """The pectoral muscle of an MLO view, bool (H, W) inside ``breast``.

    Parameters
    ----------
    pixels : 2-D image, dense bright.
    breast : its breast mask (default: :func:`breast_mask`).
    chest_wall : ``"left"``/``"right"`` (default: :func:`chest_wall_side`).
    view : ``"CC"`` (no muscle is looked for), ``"MLO"``, or None (unknown:
        looked for only when the breast runs into the top border over a wide
        stretch from the chest wall, as an MLO view's axilla does).
    max_work_side : working resolution, as for :func:`breast_mask`.

    Returns
    -------
    bool (H, W); all False for a CC view, or when no bright wedge with a
    clear edge lies in the chest-wall corner at the top of the breast (in
    extremely dense breasts the muscle can be as bright as the tissue).
    """
    if view is not None and str(view).upper() in ("CC", "XCCL", "XCCM", "FB"):
        return np.zeros(np.shape(pixels), dtype=bool)
    x = _check_image(pixels, max_work_side)
    if breast is None:
        breast = breast_mask(x, max_work_side=max_work_side)
    b = np.asarray(breast, dtype=bool)
    if b.shape != x.shape:
        raise ConfigError(f"breast mask shape {b.shape} differs from the image's {x.shape}")
    side = chest_wall or chest_wall_side(b)
    if side not in ("left", "right"):
        return np.zeros(x.shape, dtype=bool)
    work, factor = _work_image(x, max_work_side)
    small = _block_any(b, factor, work.shape)
    if side == "right":
        work, small = work[:, ::-1], small[:, ::-1]
    wedge = _pectoral_wedge(work, small, known_oblique=view is not None)
    if side == "right":
        wedge = wedge[:, ::-1]
    return _upsample(wedge, factor, x.shape) & b


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold (maximum between-class variance) of ``values``.

    Returns
    -------
    float or None
        The threshold (values > threshold form the bright class), or None
        when ``values`` is constant.
    """
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return None
    # Bin by integer quantisation + bincount: several times faster than np.histogram.
    width = (hi - lo) / bins
    index = np.minimum(((values - np.float32(lo)) * np.float32(1.0 / width)).astype(np.int32), bins - 1)
    hist = np.bincount(index.ravel(), minlength=bins)
    edges = lo + width * np.arange(bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist, dtype=np.float64)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = sum0 / weight0
        mean1 = (sum0[-1] - sum0) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between))
    return float(edges[k + 1])


def _check_image(pixels: np.ndarray, max_work_side: int) -> np.ndarray:
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim != 2:
        raise ConfigError(f"breast_mask expects a 2-D image, got shape {x.shape}")
    if max_work_side < 16:
        raise ConfigError(f"max_work_side must be at least 16, got {max_work_side}")
    return x


def _work_image(x: np.ndarray, max_work_side: int) -> tuple[np.ndarray, int]:
    """Block mean by the smallest integer factor that brings the longer side to ``max_work_side``, 3x3 mean."""
    factor = max(1, int(np.ceil(max(x.shape) / max_work_side)))
    return ndimage.uniform_filter(_block_mean(x, factor), size=3, mode="nearest"), factor


def _levels(work: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float, float, float] | None:
    """(background level, background noise, tissue level) from Otsu's two classes; None for a flat image."""
    values = work if exclude is None or not exclude.any() else work[~exclude]
    otsu = otsu_threshold(values)
    if otsu is None:
        return None
    dark, bright = values[values <= otsu], values[values > otsu]
    step = max(1, dark.size // 20_000)  # a subsample is plenty for a median
    sample = dark[::step]
    level = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - level)))
    tissue = float(np.median(bright[:: max(1, bright.size // 20_000)])) if bright.size else otsu
    return level, noise, tissue


def _breast(work: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The breast at work resolution (module docstring, steps 3-6) and the threshold used."""
    levels = _levels(work, edges)
    if levels is None:
        return np.zeros(work.shape, dtype=bool), None
    level, noise, tissue = levels
    threshold = level + max(4.0 * noise, _MIN_STEP * (tissue - level))
    keep_out = _dilate3(edges) if edges.any() else edges
    foreground = (work > threshold) & ~keep_out
    labels, count = ndimage.label(_open3(foreground))
    if count == 0:
        return np.zeros(work.shape, dtype=bool), threshold
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background label
    breast = labels == int(np.argmax(sizes))
    # grow back what the opening (and the margin kept from the strips) shaved off, never past the foreground
    regrow = (work > threshold) & ~edges
    for _ in range(2):
        breast = _dilate3(breast) & regrow
    return _fill_holes(breast), threshold


def _refine_boundary(
    x: np.ndarray, breast: np.ndarray, factor: int, threshold: float | None, edges: np.ndarray
) -> np.ndarray:
    """Full-resolution mask: the work mask's boundary blocks decided pixel by pixel.

    A boundary block is partly breast; at full resolution (3x3 mean) its
    pixels above the threshold are breast. The threshold is raised to 4
    noise deviations of the full-resolution background when that is noisier.
    """
    full = _upsample(breast, factor, x.shape)
    if factor == 1 or threshold is None or not breast.any():
        return full
    ring = _upsample(_dilate3(breast) & ~_erode3(breast), factor, x.shape)
    rows = np.flatnonzero(ring.any(axis=1))
    r0, r1 = max(0, rows[0] - 1), min(x.shape[0], rows[-1] + 2)
    smooth = ndimage.uniform_filter(x[r0:r1], size=3, mode="nearest")
    outside = ~full[r0:r1] & ~edges[r0:r1]
    sample = smooth[outside][:: max(1, int(outside.sum()) // 50_000)]
    if sample.size:
        level = float(np.median(sample))
        noise = 1.4826 * float(np.median(np.abs(sample - level)))
        threshold = max(threshold, level + 4.0 * noise)
    decided = (smooth > threshold) & ~edges[r0:r1]
    band = ring[r0:r1]
    full[r0:r1] = np.where(band, decided, full[r0:r1])
    return full


def _film_edges(work: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Film-edge strips at work resolution and the sides that carry one."""
    edges = np.zeros(work.shape, dtype=bool)
    lo, hi = np.percentile(work[:: max(1, work.shape[0] // 128), :: max(1, work.shape[1] // 128)], (1.0, 99.9))
    span = float(hi - lo)
    if not span > 0:
        return edges, ()
    bright = float(lo) + 0.35 * span
    flat = _flatness(work, bright, span)
    sides = []
    for side in ("top", "bottom", "left", "right"):
        view = _side_view(work, side)
        flat_strip = _strip_from_border(view, bright, flat)
        thin_strip = _thin_band_from_border(view, bright, cut_contacts=flat_strip is None)
        if flat_strip is not None or thin_strip is not None:
            target = _side_view(edges, side)
            for strip in (flat_strip, thin_strip):
                if strip is not None:
                    target |= strip
            sides.append(side)
    return edges, tuple(sides)


def _side_view(a: np.ndarray, side: str) -> np.ndarray:
    """A view of ``a`` whose row 0 is the border ``side`` and whose rows run inwards."""
    return {"top": a, "bottom": a[::-1], "left": a.T, "right": a.T[::-1]}[side]


def _roughness(lines: np.ndarray) -> np.ndarray:
    """Standard deviation over 5 neighbouring pixels along each line (row) of ``lines``."""
    mean = ndimage.uniform_filter1d(lines, 5, axis=1, mode="nearest")
    square = ndimage.uniform_filter1d(lines * lines, 5, axis=1, mode="nearest")
    return np.sqrt(np.maximum(square - mean * mean, 0.0))


def _flatness(work: np.ndarray, bright: float, span: float) -> float:
    """How flat a strip is along its border: well below the texture of the bright tissue inside the
    image (measured the same way, away from the borders), never above a fixed share of the range."""
    rows, cols = work.shape
    inner = work[rows // 10 : rows - rows // 10, cols // 10 : cols - cols // 10]
    rough = _roughness(inner)[inner > bright]
    texture = float(np.median(rough)) if rough.size >= 50 else np.inf
    return min(_EDGE_FLATNESS * span, 0.3 * texture)


def _strip_from_border(view: np.ndarray, bright: float, flat: float) -> np.ndarray | None:
    """The strip along row 0 of ``view`` (rows = depth from the border), or None.

    A pixel is strip-like when it is bright and flat along the border; a
    strip line has at least :data:`_EDGE_COVERAGE` of its pixels so.
    """
    depth_max = max(2, int(np.ceil(_EDGE_MAX_DEPTH * view.shape[0])))
    gap_max = max(3, int(np.ceil(_EDGE_MAX_GAP * view.shape[0])))
    band = view[:depth_max]
    strip_like = (band > bright) & (_roughness(band) <= flat)
    coverage = strip_like.mean(axis=1)
    first = next((d for d in range(min(gap_max + 1, depth_max)) if coverage[d] >= _EDGE_COVERAGE), None)
    if first is None:
        return None
    last = first
    while last + 1 < depth_max and coverage[last + 1] >= _EDGE_COVERAGE:
        last += 1
    solid = last - first + 1
    if solid >= depth_max // 2:  # half the border region bright and flat is no strip (e.g. a saturated image)
        return None
    limit = min(depth_max, last + 1 + max(2, solid))
    # ragged inner edge: at every position along the border, follow strip-like pixels inwards
    covered = strip_like[first : last + 1].any(axis=0)
    # the flatness window straddles the strip's ends: extend them over the bright pixels it missed there
    covered = ndimage.binary_dilation(covered, iterations=2) & (band[first : last + 1] > bright).any(axis=0)
    run = np.cumprod(strip_like[last + 1 : limit] & covered[None, :], axis=0).astype(bool)
    strip = np.zeros(view.shape, dtype=bool)
    strip[: last + 1] = covered[None, :]
    strip[last + 1 : limit] = run
    return strip


def _thin_band_from_border(view: np.ndarray, bright: float, cut_contacts: bool = True) -> np.ndarray | None:
    """A thin bright band along row 0 of ``view``, or None.

    At low resolution a strip is a line or two, blurred into its gap and its
    ragged edge, and no longer flat; what is left is its shape: at most
    positions along the border, a run of bright pixels starts within the gap
    allowance and ends (in the dark) within half the strip depth limit. Where
    the run goes on (the breast or a label touching the strip) the band is
    cut at the depth of the rest, unless ``cut_contacts`` is False (the flat
    strip found there already knows its depth).
    """
    depth_max = max(2, int(np.ceil(_EDGE_MAX_DEPTH * view.shape[0])))
    shallow_max = max(2, int(np.ceil(0.5 * _EDGE_MAX_DEPTH * view.shape[0])))
    gap_max = max(3, int(np.ceil(_EDGE_MAX_GAP * view.shape[0])))
    lit = view[: depth_max + 1] > bright
    start_allowed = lit[: gap_max + 1].any(axis=0)
    start = np.argmax(lit, axis=0)  # first bright depth at each position
    depth_index = np.arange(lit.shape[0])[:, None]
    after = lit & (depth_index >= start[None, :])
    # end of the first run: first dark pixel after the start
    dark_after = ~lit & (depth_index > start[None, :])
    has_end = dark_after.any(axis=0)
    end = np.where(has_end, np.argmax(dark_after, axis=0), lit.shape[0])
    shallow = start_allowed & has_end & (end <= shallow_max)
    # a strip is one long stretch along the border (the breast may interrupt it where it touches); the
    # letters of a label close to the border are short stretches with gaps between them
    if shallow.mean() < _THIN_COVERAGE or _longest_run(shallow) < _THIN_STRETCH * shallow.size:
        return None
    depth = int(np.ceil(np.percentile(end[shallow], 90)))
    strip = np.zeros(view.shape, dtype=bool)
    rows = depth_index[: depth + 1]
    cut = np.where(shallow, end, np.where(start_allowed & cut_contacts, depth, 0))
    strip[: depth + 1] = (rows < cut[None, :]) & (after[: depth + 1] | (rows < start[None, :]))
    return strip


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return int((changes[1::2] - changes[::2]).max()) if changes.size else 0


def _pectoral_wedge(work: np.ndarray, breast: np.ndarray, known_oblique: bool = False) -> np.ndarray:
    """The pectoral muscle at work resolution, chest wall on the left (module docstring)."""
    rows, cols = work.shape
    empty = np.zeros(work.shape, dtype=bool)
    filled = np.flatnonzero(breast.any(axis=1))
    if not filled.size:
        return empty
    # the breast's chest-wall column (after any film-edge strip there): where most of its rows start
    starts = np.argmax(breast[filled], axis=1)
    chest = int(np.median(starts))
    near = chest + 0.02 * cols
    if not known_oblique:
        # an MLO breast runs into the top border (or a film-edge strip there) over a wide stretch from
        # the chest wall; a CC breast rounds off well below it
        top = int(filled[0]) + max(1, int(0.02 * rows))
        top_extent = np.flatnonzero(breast[min(top, rows - 1)])
        if filled[0] > _EDGE_MAX_DEPTH * rows + 1 or top_extent.size < 0.15 * cols or top_extent.min() > near:
            return empty
    smooth = ndimage.gaussian_filter(np.where(breast, work, 0.0), sigma=max(1.0, 0.01 * max(rows, cols)))
    inside = ndimage.binary_erosion(breast, iterations=2)
    values = work[breast]
    span = float(np.percentile(values, 99) - np.percentile(values, 1))
    if not span > 0:
        return empty
    r_idx, c_idx, weights = [], [], []
    for r in range(int(filled[0]), int(0.7 * rows)):
        extent = np.flatnonzero(inside[r])
        if extent.size < 4 or extent.min() > near:
            continue
        stop = int(extent.min() + 0.6 * (extent.max() - extent.min()))  # a muscle never spans more
        profile = smooth[r, : stop + 1]
        fall = profile[:-2] - profile[2:]  # drop over two pixels, going away from the chest wall
        if fall.size < 3:
            continue
        c = int(np.argmax(fall[1:])) + 2  # not the chest-wall pixel itself
        if fall[c - 1] < 0.04 * span:
            continue
        r_idx.append(r)
        c_idx.append(c)
        weights.append(fall[c - 1])
    if len(r_idx) < max(5, 0.05 * rows):
        return empty
    r_arr, c_arr = np.asarray(r_idx, float), np.asarray(c_idx, float)
    curve = _robust_quadratic(r_arr, c_arr)
    if curve is None:
        return empty
    rr = np.arange(rows, dtype=float)
    boundary = np.polyval(curve, rr)
    # the muscle ends where its edge meets the chest wall
    below = np.flatnonzero((boundary <= chest) & (rr > filled[0]))
    end = int(below[0]) if below.size else rows
    start = int(filled[0])
    if end - start < 0.1 * rows or not chest + 0.05 * cols < boundary[start] < 0.8 * cols:
        return empty
    cc = np.arange(cols, dtype=float)[None, :]
    wedge = (cc < boundary[:, None]) & (rr[:, None] < end) & breast
    # a muscle is brighter than the tissue just beyond its edge
    beyond = (cc >= boundary[:, None]) & (cc < boundary[:, None] + 0.08 * cols) & (rr[:, None] < end) & breast
    if not wedge.any() or not beyond.any() or np.median(work[wedge]) - np.median(work[beyond]) < 0.05 * span:
        return empty
    return wedge


def _robust_quadratic(r: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    """Coefficients (q, k, a) of the edge c = q r^2 + k r + a through the points, or None.

    The rows below the muscle contribute points from unrelated edges, often
    as many as the muscle's own, so the fit is a consensus: of the lines
    through pairs of points (a deterministic subsample), the one that runs
    towards the chest wall going down with the most points within 2 % of the
    image width; a quadratic is then fitted to those points and refitted to
    its own inliers.
    """
    tolerance = max(2.0, 0.02 * (c.max() + 1))
    pick = np.linspace(0, r.size - 1, min(r.size, 80)).round().astype(int)
    i, j = np.triu_indices(pick.size, k=1)
    ri, rj, ci, cj = r[pick][i], r[pick][j], c[pick][i], c[pick][j]
    ok = rj != ri
    slope = np.where(ok, (cj - ci) / np.where(ok, rj - ri, 1.0), 0.0)
    ok &= slope < 0
    if not ok.any():
        return None
    slope, offset = slope[ok], ci[ok] - slope[ok] * ri[ok]
    residual = np.abs(c[None, :] - (slope[:, None] * r[None, :] + offset[:, None]))
    best = int(np.argmax((residual <= tolerance).sum(axis=1)))
    keep = residual[best] <= tolerance
    if keep.sum() < 5:
        return None
    coeffs = np.array([0.0, slope[best], offset[best]])
    for _ in range(2):
        degree = 2 if keep.sum() >= 8 else 1
        fitted = np.polyfit(r[keep], c[keep], degree)
        coeffs = fitted if degree == 2 else np.concatenate([[0.0], fitted])
        keep = np.abs(c - np.polyval(coeffs, r)) <= tolerance
        if keep.sum() < 5:
            return None
    return coeffs


def _block_any(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A full-resolution mask on the work grid: True where most of a block is True."""
    if factor == 1:
        return mask[: shape[0], : shape[1]]
    return _block_mean(mask.astype(np.float32), factor)[: shape[0], : shape[1]] >= 0.5


def _block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor x factor blocks (the ragged edge is dropped)."""
    if factor == 1:
        return x
    h, w = x.shape[0] // factor, x.shape[1] // factor
    # Summing the factor**2 strided views is several times faster than a
    # reshape-and-mean over non-contiguous axes.
    total = np.zeros((h, w), dtype=np.float32)
    for dr in range(factor):
        for dc in range(factor):
            total += x[dr : h * factor : factor, dc : w * factor : factor]
    total *= np.float32(1.0 / factor**2)
    return total


def _open3(mask: np.ndarray) -> np.ndarray:
    """Binary opening with a 3x3 square; pixels beyond the border repeat the edge.

    Written as separable 3-tap AND/OR on shifted views: about ten times
    faster than ``ndimage.binary_opening`` on a 512 x 416 image.
    """
    return _dilate3(_erode3(mask))


def _erode3(m: np.ndarray) -> np.ndarray:
    return _three_tap(_three_tap(m, np.logical_and, axis=0), np.logical_and, axis=1)


def _dilate3(m: np.ndarray) -> np.ndarray:
    return _three_tap(_three_tap(m, np.logical_or, axis=0), np.logical_or, axis=1)


def _three_tap(m: np.ndarray, op, axis: int) -> np.ndarray:
    """op(previous, current, next) along ``axis``, edges repeated."""
    padded = np.concatenate([m.take([0], axis=axis), m, m.take([-1], axis=axis)], axis=axis)
    n = m.shape[axis]
    before = padded[:n] if axis == 0 else padded[:, :n]
    after = padded[2:] if axis == 0 else padded[:, 2:]
    return op(op(before, m), after)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the image border.

    Same result as ``ndimage.binary_fill_holes`` (4-connected background),
    found by labelling the background once instead of iterated dilation.
    """
    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.zeros(count + 1, dtype=bool)
    outside[border] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[labels]


def _upsample(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling back to ``shape``; the dropped edge copies its neighbour."""
    if factor == 1:
        return mask
    full = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
    pad_rows, pad_cols = shape[0] - full.shape[0], shape[1] - full.shape[1]
    if pad_rows or pad_cols:
        full = np.pad(full, ((0, pad_rows), (0, pad_cols)), mode="edge")
    return full
