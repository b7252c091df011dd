"""Write the explorer: a self-contained static site over every validation image.

The site opens from the file system (``file://``) with no server, so it never
fetches JSON (Chromium blocks ``fetch`` of local files). Everything is plain
``<script>`` and ``<img>`` loading:

``index.html``, ``app.js``, ``style.css``
    the page, copied from the package's ``web/assets/`` (vanilla JS, no CDN).
``data.js``
    ``window.MAMMO_SITE = {...}``: site metadata (seeds, layers, colour-map
    look-up tables) and one small record per image (see :data:`SITE_FORMAT`).
``img/<key>.jpg``, ``thumb/<key>.jpg``
    the mammogram as a small JPEG (``display_height`` px tall) and a thumbnail;
    only thumbnails of the visible table page load at start, lazily.
``maps/<key>.js``
    ``window.mammoMaps("<key>", {...})``: that image's low-resolution heatmaps
    (uint8, base64) for every seed and layer, the class probabilities and the
    expert-ROI outline; inserted as a ``<script>`` only when the image is opened.
    The browser colours the maps with a look-up table (jet, viridis, inferno,
    gray) so one stored map serves every colour map.

Inputs are plain data (:class:`SiteImage`, :class:`SiteSeed`,
:class:`SiteLayer`), in model space: the display image is the square model
input and each heatmap covers that square. The writer crops the padding
(``Geometry.offset``/``resized_shape``) and undoes the laterality flip so the
page shows the breast as acquired; the map is cropped and flipped the same way
in the browser.

Images can be streamed (any iterable); only one image's pixels are held at a
time, so a 5,000-image site builds in constant memory.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from mammography import __version__
from mammography.atomic import OutputLock, describe_os_error, replace_tree, temp_path
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry

__all__ = [
    "SITE_FORMAT",
    "COLORMAPS",
    "SiteSeed",
    "SiteLayer",
    "SeedResult",
    "SiteImage",
    "SiteSummary",
    "build_site",
    "consensus",
]

log = logging.getLogger(__name__)

#: version of the ``data.js`` / ``maps/*.js`` layout written here
SITE_FORMAT = 1
#: colour maps offered in the page (matplotlib names), the first is the default
COLORMAPS = ("jet", "viridis", "inferno", "gray")
#: name of the file that marks a folder as written by this module
SITE_MARKER = "site-info.json"
CLASS_LETTERS = ("A", "B", "C", "D")
_ASSETS = ("index.html", "app.js", "style.css")


@dataclass(frozen=True)
class SiteSeed:
    """One run shown as a column of the table and a panel of the image view.

    Attributes
    ----------
    key : short identifier, unique in the site (e.g. ``"seed42"``).
    label : what the page shows (e.g. ``"seed 42"``).
    run : where the run came from (its directory), shown in the header.
    metrics : the run's validation metrics (``acc``, ``kappa_quadratic``,
        ``macro_f1`` ...; floats or None) of the predictions the page shows
        (recomputed from the checkpoint), shown in the header.
    stored_metrics : the metrics the run stored itself, shown beside them
        when they read differently; None otherwise.
    stored_source : the file ``stored_metrics`` came from.
    note : a warning about the run shown under its metrics (e.g. a model
        whose output does not depend on the image), or "".
    """

    key: str
    label: str
    run: str = ""
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    stored_metrics: Mapping[str, float | None] | None = None
    stored_source: str = ""
    note: str = ""


@dataclass(frozen=True)
class SiteLayer:
    """One heatmap choice of the layer switch.

    Attributes
    ----------
    key : identifier used in the maps (e.g. ``"features.8"``, ``"fused"``).
    label : what the switch shows (e.g. ``"final block (features.8)"``).
    """

    key: str
    label: str


@dataclass
class SeedResult:
    """What one run says about one image.

    Attributes
    ----------
    pred : predicted class, 1..4 (recomputed from the checkpoint: what the maps explain).
    confidence : probability of the predicted class, 0..1.
    stored_pred : the run's stored prediction where it differs from ``pred``, else None.
    probs : the four class probabilities (A..D), or None.
    maps : layer key -> low-resolution heatmap (h, w) covering the square
        model input. Each map is min-max normalised to [0, 1] as in the
        report's figures (red = 1.0 = the highest attention in that map; a
        constant map is all 0), then stored as uint8.
    spurious : that run's spurious-attention score for the image (share of
        attention on borders, markers or outside the breast), or None.
    spurious_flag : True when the analysis flags this run's attention on the
        image as spurious (a share above its threshold), or None.
    details : further numbers shown under this run's panel (label -> value),
        e.g. the shares per region or the overlap with the expert ROI.
    geometry : how this run placed the image in *its* square, when it differs
        from the image's (another input size or laterality handling); None =
        :attr:`SiteImage.geometry`.
    """

    pred: int
    confidence: float
    probs: Sequence[float] | None = None
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)
    spurious: float | None = None
    spurious_flag: bool | None = None
    details: Mapping[str, float | str] = field(default_factory=dict)
    geometry: Geometry | None = None
    stored_pred: int | None = None


@dataclass
class SiteImage:
    """One validation image with every run's result.

    Attributes
    ----------
    name : display name (file name, accession ...); also searched by the page.
    y_true : true density class, 1..4.
    square : the model-space square image (S, S), float in [0, 1], dense =
        bright (``MammogramDataset.square(i)``).
    results : seed key -> :class:`SeedResult`; runs that did not see this
        image (other cross-validation folds) are simply absent.
    geometry : how the original image sits in ``square`` (padding, flip);
        None means the whole square is image and nothing was flipped.
    roi : expert region of interest as a boolean mask in the original
        image's orientation, at any resolution (e.g. the mask PNG as read),
        or None. Drawn as an outline.
    attention_agreement : cross-seed attention agreement for the image (e.g.
        mean pairwise rank correlation of the seeds' maps), or None.
    high_agreement : the cross-seed consistency class: True = "high
        agreement", False = "low agreement - requires review", None = not
        assessed (fewer than two seeds saw the image).
    reasons : why the agreement is low (shown in the image view).
    spurious : image-level spurious-attention score; None means the mean of
        the seeds' scores.
    meta : extra text fields shown in the image view (view, laterality,
        accession, patient_id, path ...).
    display : the whole image in its original orientation (float (h, w) in
        [0, 1]), when ``square`` does not hold all of it (a centre-cropped
        model input); None = cut from ``square``.
    """

    name: str
    y_true: int
    square: np.ndarray
    results: Mapping[str, SeedResult]
    geometry: Geometry | None = None
    roi: np.ndarray | None = None
    attention_agreement: float | None = None
    high_agreement: bool | None = None
    reasons: Sequence[str] = ()
    spurious: float | None = None
    meta: Mapping[str, object] = field(default_factory=dict)
    display: np.ndarray | None = None


@dataclass(frozen=True)
class SiteSummary:
    """What :func:`build_site` wrote.

    Attributes
    ----------
    path : the site folder.
    index : ``path / "index.html"`` (open it in a browser).
    n_images : number of images in the site.
    n_files : number of files written.
    bytes : total size of those files.
    """

    path: Path
    index: Path
    n_images: int
    n_files: int
    bytes: int


# ---------------------------------------------------------------------------
# per-image numbers
# ---------------------------------------------------------------------------


def consensus(preds: Sequence[int], confidences: Sequence[float]) -> tuple[int, float | None]:
    """Majority prediction over seeds and the share of seeds that agree with it.

    Parameters
    ----------
    preds : predicted classes (1..4) of the seeds that saw the image.
    confidences : their confidences, same order; a tie between classes goes
        to the class with the larger summed confidence.

    Returns
    -------
    (majority class, agreement) ; agreement is ``count(majority) / n`` in
    (0, 1], or None when fewer than two seeds saw the image (no comparison).
    """
    if not preds:
        raise ConfigError("an image needs at least one seed's prediction")
    votes = Counter(preds)
    conf_sum: dict[int, float] = {}
    for p, c in zip(preds, confidences):
        conf_sum[p] = conf_sum.get(p, 0.0) + float(c)
    top = max(votes.values())
    majority = max((p for p, v in votes.items() if v == top), key=lambda p: (conf_sum[p], -p))
    agreement = top / len(preds) if len(preds) > 1 else None
    return int(majority), agreement


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, digits)


def _encode_map(heatmap: np.ndarray) -> tuple[int, int, str]:
    """(h, w, base64 uint8) of a heatmap min-max normalised to [0, 1] (as the
    report's figures are; a constant map becomes all zeros)."""
    import torch

    from mammography.cam.result import normalise_maps

    m = np.asarray(heatmap, dtype=np.float64)
    if m.ndim != 2:
        raise ConfigError(f"a heatmap must be 2-D (h, w), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ConfigError("a heatmap contains NaN or infinite values")
    u8 = np.round(normalise_maps(torch.from_numpy(m)).numpy() * 255.0).astype(np.uint8)
    return u8.shape[0], u8.shape[1], base64.b64encode(u8.tobytes()).decode("ascii")


# ---------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------


def _content_box(square: np.ndarray, geometry: Geometry | None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the padded square."""
    if geometry is None:
        return 0, 0, square.shape[0], square.shape[1]
    if geometry.size != square.shape[0] or square.shape[0] != square.shape[1]:
        raise ConfigError(
            f"square image of shape {square.shape} does not match its geometry (size {geometry.size})"
        )
    (top, left), (h, w) = geometry.offset, geometry.resized_shape
    return int(top), int(left), int(h), int(w)


def _map_frame(geometry: Geometry | None) -> list:
    """Where the display image lies in a map's square: [top, left, height, width]
    as fractions of the side, and 1 when the square is mirrored (0 otherwise)."""
    if geometry is None:
        return [0.0, 0.0, 1.0, 1.0, 0]
    (top, left), (h, w), size = geometry.offset, geometry.resized_shape, geometry.size
    return [top / size, left / size, h / size, w / size, 1 if geometry.flipped else 0]


def _to_display(square: np.ndarray, box, flipped: bool) -> np.ndarray:
    """Crop the padding and undo the laterality flip (the breast as acquired)."""
    top, left, h, w = box
    crop = np.asarray(square)[top : top + h, left : left + w]
    return crop[:, ::-1] if flipped else crop


def _resize(pixels: np.ndarray, height: int) -> Image.Image:
    img = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    img.save(path, format="JPEG", quality=quality, optimize=True)


def _roi_outline(roi: np.ndarray, size: tuple[int, int]) -> str | None:
    """SVG path (display-pixel coordinates) of the ROI mask's outline, or None if empty.

    ``roi`` is in the original image's orientation at any resolution. It is
    traced on a grid of half the display resolution (an outline does not need
    more, and expert masks of dense tissue have hundreds of islands), specks
    smaller than :data:`_MIN_RING_AREA` are dropped and the rings simplified.
    """
    import contourpy  # matplotlib's contour engine

    mask = np.asarray(roi) > 0
    if mask.ndim != 2 or not mask.any():
        return None
    w, h = size
    gw, gh = max(2, round(w / _OUTLINE_STEP)), max(2, round(h / _OUTLINE_STEP))
    grid = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((gw, gh), Image.Resampling.BILINEAR))
    # pad so regions touching the border close into rings
    z = np.pad(grid.astype(np.float32) / 255.0, 1)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    scale = np.array([w / gw, h / gh])
    min_area = _MIN_RING_AREA / (scale[0] * scale[1])
    parts = []
    for line in lines:
        x, y = line[:, 0], line[:, 1]
        if len(line) < 4 or 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) < min_area:
            continue
        pts = _simplify(line, _OUTLINE_TOLERANCE / _OUTLINE_STEP)
        # undo the pad, then grid pixel centres -> display coordinates
        pts = np.clip((pts - 1.0 + 0.5) * scale, 0, [w, h])
        if len(pts) >= 3:
            parts.append("M" + " ".join(f"{px:.0f} {py:.0f}" for px, py in pts) + "Z")
    return "".join(parts) or None


#: the ROI is traced on a grid this many times coarser than the display image
_OUTLINE_STEP = 2
#: rings enclosing less than this (display pixels squared) are dropped
_MIN_RING_AREA = 12.0
#: largest distance (display pixels) an outline may move when simplified
_OUTLINE_TOLERANCE = 1.0


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Drop vertices of a ring that change it by less than ``tolerance``.

    Contours of a pixel mask have a vertex every half pixel; most lie on a
    straight line and only bloat the page. Uses matplotlib's path
    simplification (the C++ routine it renders with).
    """
    from matplotlib.path import Path as MplPath

    path = MplPath(points)
    path.should_simplify = True
    path.simplify_threshold = tolerance
    cleaned = path.cleaned(simplify=True)
    return cleaned.vertices[cleaned.codes != MplPath.STOP]


# ---------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------


def _colormap_luts() -> dict[str, str]:
    """Colour-map name -> base64 of 256 RGB triplets (matplotlib's colour maps)."""
    import matplotlib

    xs = np.linspace(0.0, 1.0, 256)
    luts = {}
    for name in COLORMAPS:
        rgb = (matplotlib.colormaps[name](xs)[:, :3] * 255.0).round().astype(np.uint8)
        luts[name] = base64.b64encode(rgb.tobytes()).decode("ascii")
    return luts


def _check_inputs(seeds: Sequence[SiteSeed], layers: Sequence[SiteLayer]) -> None:
    if not seeds:
        raise ConfigError("the explorer needs at least one run (seed)")
    if not layers:
        raise ConfigError("the explorer needs at least one heatmap layer")
    for kind, keys in (("seed", [s.key for s in seeds]), ("layer", [x.key for x in layers])):
        dup = [k for k, n in Counter(keys).items() if n > 1]
        if dup:
            raise ConfigError(f"duplicate {kind} keys for the explorer: {dup}")


def _prepare_out_dir(out_dir: Path) -> Path:
    """Refuse to replace a folder this module did not write; return a fresh temp folder beside it."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"{out_dir} exists and is not a folder; choose another --out for the explorer")
        if any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).is_file():
            raise ConfigError(
                f"{out_dir} is not empty and was not written by 'mammography explore'; "
                "choose an empty or new folder for the site"
            )
    tmp = temp_path(out_dir)
    try:
        tmp.mkdir(mode=0o755)
    except OSError as exc:
        raise describe_os_error(exc, out_dir) from None
    return tmp


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _js_assign(name: str, obj) -> str:
    # "</" never appears in JSON we write, but escape it anyway so a name
    # containing "</script>" cannot end an inline script if data.js is inlined.
    body = json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")
    return f"window.{name} = {body};\n"


def _image_record(
    key: str, img: SiteImage, seeds: Sequence[SiteSeed], display: Image.Image, has_roi: bool
) -> dict:
    """The image's row in ``data.js`` (short keys: 5,000 of them load at start)."""
    unknown = [k for k in img.results if k not in {s.key for s in seeds}]
    if unknown:
        raise ConfigError(f"image {img.name!r} has results for unknown seeds {unknown}")
    if int(img.y_true) not in (1, 2, 3, 4):
        raise ConfigError(f"image {img.name!r} has true class {img.y_true!r}; expected 1..4")
    preds, confs, spur, flags, stored = [], [], [], [], []
    for s in seeds:
        r = img.results.get(s.key)
        if r is not None and int(r.pred) not in (1, 2, 3, 4):
            raise ConfigError(f"image {img.name!r}, {s.key}: predicted class {r.pred!r}; expected 1..4")
        preds.append(None if r is None else int(r.pred))
        stored.append(None if r is None or r.stored_pred is None else int(r.stored_pred))
        confs.append(None if r is None else _round(r.confidence))
        spur.append(None if r is None else _round(r.spurious))
        flags.append(None if r is None or r.spurious_flag is None else int(bool(r.spurious_flag)))
    seen = [(p, c) for p, c in zip(preds, confs) if p is not None]
    if not seen:
        raise ConfigError(f"image {img.name!r} has no seed's result")
    majority, agreement = consensus([p for p, _ in seen], [c for _, c in seen])
    seed_spur = [s for s in spur if s is not None]
    spurious = img.spurious if img.spurious is not None else (float(np.mean(seed_spur)) if seed_spur else None)
    return {
        "k": key,
        "n": str(img.name),
        "t": int(img.y_true),
        "p": preds,
        "q": stored,
        "c": confs,
        "s": spur,
        "m": majority,
        "mc": _round(float(np.mean([c for _, c in seen]))),
        "pa": _round(agreement),
        "aa": _round(img.attention_agreement),
        "af": None if img.high_agreement is None else int(bool(img.high_agreement)),
        "ar": "; ".join(str(r) for r in img.reasons),
        "sp": _round(spurious),
        "sf": flags,
        "roi": 1 if has_roi else 0,
        "w": display.width,
        "h": display.height,
    }


def _maps_record(img: SiteImage, seeds, layers, roi_path) -> dict:
    """The contents of ``maps/<key>.js`` (loaded when the image is opened)."""
    layer_maps = {}
    for layer in layers:
        shape, encoded = None, []
        for s in seeds:
            r = img.results.get(s.key)
            m = None if r is None else r.maps.get(layer.key)
            if m is None:
                encoded.append(None)
                continue
            h, w, b64 = _encode_map(m)
            if shape not in (None, (h, w)):
                raise ConfigError(f"image {img.name!r}, layer {layer.key}: maps of different shapes across seeds")
            shape = (h, w)
            encoded.append(b64)
        if shape is not None:
            layer_maps[layer.key] = {"h": shape[0], "w": shape[1], "m": encoded}
    probs = []
    for s in seeds:
        r = img.results.get(s.key)
        probs.append(None if r is None or r.probs is None else [_round(p) for p in r.probs])
    frames = []
    for s in seeds:
        r = img.results.get(s.key)
        frames.append(None if r is None else _map_frame(r.geometry or img.geometry))
    return {
        # per seed: where the display image lies in that run's map square
        "geo": frames,
        "layers": layer_maps,
        "probs": probs,
        "details": [None if img.results.get(s.key) is None else _meta(img.results[s.key].details) for s in seeds],
        "roi": roi_path,
        "meta": _meta(img.meta),
    }


def _meta(meta: Mapping[str, object]) -> dict:
    """Text fields for the image view: numbers kept, NaN and None dropped, the rest as text."""
    out = {}
    for k, v in meta.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[str(k)] = v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    return out


def build_site(
    out_dir: str | Path,
    images: Iterable[SiteImage],
    seeds: Sequence[SiteSeed],
    layers: Sequence[SiteLayer],
    *,
    title: str = "Grad-CAM explorer",
    subtitle: str = "",
    display_height: int = 384,
    thumb_height: int = 96,
    jpeg_quality: int = 85,
    n_images: int | None = None,
    progress: bool = False,
    final_seeds: Callable[[], Sequence[SiteSeed]] | None = None,
) -> SiteSummary:
    """Write the explorer site for ``images`` into ``out_dir`` (replaced whole, atomically).

    Parameters
    ----------
    out_dir : the site folder. It is replaced only when it is empty, new, or
        a site written here earlier (it holds ``site-info.json``); anything
        else raises :class:`~mammography.errors.ConfigError`.
    images : the images, streamed; every one becomes a row of the table.
    seeds : the runs, in the order of the table columns and image panels.
    layers : the heatmap layers, in the order of the layer switch; the first
        is shown by default.
    title, subtitle : page heading and a line under it.
    display_height : height in pixels of the mammogram in the image view.
    thumb_height : height in pixels of the table thumbnails.
    jpeg_quality : JPEG quality of both.
    n_images : number of images when ``images`` is a generator (progress bar).
    progress : show a tqdm progress bar.
    final_seeds : called once the images are written, for the header's seeds
        (same keys and order as ``seeds``) when their metrics are known only
        after the images were computed.

    Returns
    -------
    SiteSummary
    """
    seeds, layers = list(seeds), list(layers)
    _check_inputs(seeds, layers)
    out_dir = Path(os.path.abspath(out_dir))  # "." or "site/.." name a real folder and its parent
    # locked (and checked writable) before the first image's maps are computed
    with OutputLock(trees=[out_dir], command="mammography explore") as lock:
        return _build_site(out_dir, images, seeds, layers, title, subtitle, display_height, thumb_height,
                           jpeg_quality, n_images, progress, lock.journal(out_dir), final_seeds)


def _build_site(out_dir, images, seeds, layers, title, subtitle, display_height, thumb_height, jpeg_quality,
                n_images, progress, journal, final_seeds=None) -> SiteSummary:
    tmp = _prepare_out_dir(out_dir)
    try:
        records = _write_images(tmp, images, seeds, layers, display_height, thumb_height, jpeg_quality, n_images, progress)
        if not records:
            raise ConfigError("the explorer got no images; check that the runs have validation predictions")
        if final_seeds is not None:
            final = list(final_seeds())
            if [x.key for x in final] != [x.key for x in seeds]:
                raise ConfigError("the explorer's final seed columns differ from the ones its images were written with")
            seeds = final
        site = {
            "format": SITE_FORMAT,
            "generator": f"mammography {__version__}",
            "title": title,
            "subtitle": subtitle,
            "classes": list(CLASS_LETTERS),
            "seeds": [
                {"key": s.key, "label": s.label, "run": s.run, "metrics": {k: _round(v) for k, v in s.metrics.items()},
                 "stored_metrics": None if s.stored_metrics is None
                 else {k: _round(v) for k, v in s.stored_metrics.items()},
                 "stored_source": s.stored_source, "note": s.note}
                for s in seeds
            ],
            "layers": [{"key": x.key, "label": x.label} for x in layers],
            "colormaps": _colormap_luts(),
            "images": records,
        }
        _write_text(tmp / "data.js", _js_assign("MAMMO_SITE", site))
        assets = resources.files("mammography.web") / "assets"
        for name in _ASSETS:
            (tmp / name).write_bytes((assets / name).read_bytes())
        files = [p for p in tmp.rglob("*") if p.is_file()]
        info = {
            "format": SITE_FORMAT,
            "generator": site["generator"],
            "n_images": len(records),
            "seeds": [s.key for s in seeds],
            "layers": [x.key for x in layers],
            "n_files": len(files) + 1,
            "bytes": sum(p.stat().st_size for p in files),
        }
        _write_text(tmp / SITE_MARKER, json.dumps(info, indent=2) + "\n")
        info["bytes"] += (tmp / SITE_MARKER).stat().st_size
        os.chmod(tmp, 0o755)  # a served/shared site must be readable whatever the umask
        replace_tree(tmp, out_dir, journal)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise describe_os_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("explorer: %d images, %d files, %.1f MB in %s", len(records), info["n_files"], info["bytes"] / 1e6, out_dir)
    return SiteSummary(out_dir, out_dir / "index.html", len(records), info["n_files"], info["bytes"])


def _write_images(tmp, images, seeds, layers, display_height, thumb_height, quality, n_images, progress) -> list[dict]:
    for sub in ("img", "thumb", "maps"):
        (tmp / sub).mkdir()
    if progress:
        from tqdm import tqdm

        images = tqdm(images, total=n_images, desc="explorer", unit="img")
    records = []
    for i, img in enumerate(images):
        key = f"i{i:05d}"
        if img.display is not None:
            pixels = np.asarray(img.display, dtype=np.float32)
        else:
            square = np.asarray(img.square, dtype=np.float32)
            if square.ndim != 2:
                raise ConfigError(f"image {img.name!r}: the square image must be 2-D, got shape {square.shape}")
            if img.geometry is not None and img.geometry.crops:
                raise ConfigError(f"image {img.name!r}: a centre-cropped square does not hold the whole image; "
                                  "pass SiteImage.display")
            box = _content_box(square, img.geometry)
            flipped = bool(img.geometry.flipped) if img.geometry is not None else False
            pixels = _to_display(square, box, flipped)
        display = _resize(pixels, display_height)
        _save_jpeg(display, tmp / "img" / f"{key}.jpg", quality)
        _save_jpeg(_resize(pixels, thumb_height), tmp / "thumb" / f"{key}.jpg", quality)
        roi_path = None if img.roi is None else _roi_outline(img.roi, display.size)
        record = _image_record(key, img, seeds, display, roi_path is not None)
        maps = _maps_record(img, seeds, layers, roi_path)
        body = json.dumps(maps, separators=(",", ":")).replace("</", "<\\/")
        _write_text(tmp / "maps" / f"{key}.js", f'window.mammoMaps("{key}",{body});\n')
        records.append(record)
    return records
