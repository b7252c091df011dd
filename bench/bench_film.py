"""Measure the breast mask, markers, windowing and laterality/view on film-style and clean phantoms.

Film-style phantoms (``mammography synth --style film``) reproduce digitised
film archives with their ground truth; the clean phantoms are the project's
default data. For each, side by side in one run:

* **breast mask** (:func:`mammography.io.breast_mask` on the image as read):
  IoU with the true breast, and the share of *skin-line points* inside the
  mask (true breast pixels next to the film background, 3 px or more away
  from a film-edge strip and the image border); "every point inside" means
  a share of 1.000;
* **markers** (:func:`mammography.analysis.spurious.detect_markers` on the
  image resized to each analysis size, as ``analyze`` does): recall of the
  burned-in labels (a label is found when half of its letters' pixels lie in
  a detected marker), and film-edge false positives (detected markers with a
  quarter or more of their area on a strip);
* **saturated breast share**: true breast pixels read at 1.0 (the window's top);
* **laterality and view by source** (:func:`mammography.io.with_orientation`,
  the manifest's empty columns as hints): accuracy per source; for the clean
  phantoms, whose headers always say it, what the image alone says.

Usage::

    python bench/bench_film.py [--n 40] [--data DIR] [--sizes 128 256 512]

``--data DIR`` keeps (or reuses) the film data set there. The evaluation only
needs ``read_mammogram``, ``breast_mask``, ``detect_markers`` and
``fit_to_square``, so the same command run against another checkout
(``PYTHONPATH=<checkout>/src python bench/bench_film.py --data DIR``, the data
written by this one) prints that version's figures for a before/after
comparison; what it lacks is printed as n/a. About 2-4 minutes on two cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

import mammography
from mammography.analysis.spurious import detect_markers
from mammography.io import breast_mask, fit_to_square, read_mammogram
from mammography.synth import make_phantom

try:  # newer versions only
    from mammography.io import Mammogram, resolve_laterality, resolve_view, with_orientation
except ImportError:
    with_orientation = None

CLEAN_SHAPE = (1024, 832)
SKIN_MARGIN = 3  # px from strips and borders


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def skin_points(breast: np.ndarray, strips: np.ndarray) -> np.ndarray:
    """True-breast pixels next to the film background, away from strips and the image border."""
    background = ~breast & ~strips
    points = breast & ndimage.binary_dilation(background)
    away = ~ndimage.binary_dilation(strips, iterations=SKIN_MARGIN) if strips.any() else np.ones_like(breast)
    points &= away
    points[:SKIN_MARGIN] = points[-SKIN_MARGIN:] = False
    points[:, :SKIN_MARGIN] = points[:, -SKIN_MARGIN:] = False
    return points


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """The image at a model size, its own orientation, no padding (what the analysis segments)."""
    square, g = fit_to_square(np.asarray(pixels, dtype=np.float32), size, flip=False)
    (top, left), (h, w) = g.offset, g.resized_shape
    return np.clip(np.asarray(square)[top : top + h, left : left + w], 0.0, 1.0)


def mask_at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A full-resolution mask on a smaller grid: any overlap counts."""
    rows = np.linspace(0, mask.shape[0], shape[0] + 1).astype(int)
    cols = np.linspace(0, mask.shape[1], shape[1] + 1).astype(int)
    out = np.add.reduceat(np.add.reduceat(mask.astype(np.int32), rows[:-1], axis=0), cols[:-1], axis=1)
    return out > 0


def marker_figures(pixels, label: np.ndarray, strips: np.ndarray, size: int) -> tuple[int, int, int]:
    """(label found 0/1 or -1 without a label, markers on strips, markers) at one analysis size."""
    small = resized(pixels, size)
    found, n = detect_markers(small, breast_mask(small))
    label_small = mask_at(label, small.shape)
    strips_small = mask_at(strips, small.shape)
    hit = -1 if not label_small.any() else int(found[label_small].mean() >= 0.5)
    parts, count = ndimage.label(found)
    on_strips = sum(int(strips_small[parts == k].mean() >= 0.25) for k in range(1, count + 1))
    return hit, on_strips, count


def orientation(m, hint_lat, truth_lat, truth_view, stats) -> None:
    if with_orientation is not None:
        r = with_orientation(m, laterality_hint=hint_lat)
        lat, lat_src, view, view_src = r.laterality, r.laterality_source, r.view, r.view_source
    else:  # older versions: what the header says, nothing else
        lat, view = m.laterality, m.view
        lat_src, view_src = ("header" if lat else "none"), ("header" if view else "none")
    stats["laterality", lat_src or "none"].append(lat == truth_lat)
    stats["view", view_src or "none"].append(view == truth_view)


def film_figures(root: Path, fmt: str, sizes) -> dict:
    manifest = pd.read_csv(root / {"dicom": "manifest.csv", "png": "manifest_png.csv", "jpeg": "manifest_jpeg.csv"}[fmt],
                           keep_default_na=False)
    out = defaultdict(list)
    stats = defaultdict(list)
    for row in manifest.itertuples():
        m = read_mammogram(root / row.image_path)
        truth = _mask(root / row.breast_mask_path)
        strips = _mask(root / row.film_edge_mask_path)
        label = _mask(root / row.label_mask_path)
        mask = breast_mask(m.pixels)
        points = skin_points(truth, strips)
        out["iou"].append(iou(mask, truth))
        out["skin"].append(float(mask[points].mean()) if points.any() else 1.0)
        out["skin_missed"].append(int((points & ~mask).sum()))
        out["saturated"].append(float((m.pixels[truth] >= 1.0).mean()))
        for size in sizes:
            hit, on_strips, count = marker_figures(m.pixels, label, strips, size)
            if hit >= 0:
                out[f"recall_{size}"].append(hit)
            out[f"strip_fp_{size}"].append(on_strips)
        orientation(m, row.laterality or None, row.true_laterality, row.true_view, stats)
    out["orientation"] = stats
    return out


def clean_figures(n: int, sizes) -> dict:
    out = defaultdict(list)
    for i in range(n):
        view, lat = ("CC", "MLO")[i % 2], ("L", "R")[(i // 2) % 2]
        p = make_phantom(1 + i % 4, view, lat, CLEAN_SHAPE, seed=[7, i])
        mask = breast_mask(p.pixels)
        points = skin_points(p.breast_mask, np.zeros_like(p.breast_mask))
        out["iou"].append(iou(mask, p.breast_mask))
        out["skin"].append(float(mask[points].mean()))
        out["skin_missed"].append(int((points & ~mask).sum()))
        r0, c0, r1, c1 = p.marker_bbox
        label = np.zeros_like(p.breast_mask)
        label[r0:r1, c0:c1] = p.pixels[r0:r1, c0:c1] >= 0.99
        for size in sizes:
            hit, _, _ = marker_figures(p.pixels, label, np.zeros_like(label), size)
            out[f"recall_{size}"].append(hit)
        if with_orientation is not None:  # their headers always say it: what would the image alone say?
            m = Mammogram(pixels=p.pixels, original_shape=p.pixels.shape, pixel_spacing=None, laterality=None,
                          view=None, photometric_interpretation="MONOCHROME2", path=Path(f"clean{i}"))
            stats = out.setdefault("orientation", defaultdict(list))
            stats["laterality", "image"].append(resolve_laterality(m, sources=("image",)).value == lat)
            stats["view", "image"].append(resolve_view(m, sources=("image",)).value == view)
    return out


def _print_block(title: str, f: dict, sizes) -> None:
    print(f"  {title}")
    iou_v = np.array(f["iou"])
    print(f"    breast-mask IoU            min {iou_v.min():.4f}  mean {iou_v.mean():.4f}  (images > 0.95: "
          f"{(iou_v > 0.95).sum()}/{iou_v.size})")
    skin = np.array(f["skin"])
    print(f"    skin-line points inside    min {skin.min():.4f}  mean {skin.mean():.4f}  (points missed: "
          f"{int(np.sum(f['skin_missed']))}; images with every point inside: {(skin == 1.0).sum()}/{skin.size})")
    if f.get("saturated"):
        sat = np.array(f["saturated"])
        print(f"    saturated breast share     max {100 * sat.max():.2f} %  mean {100 * sat.mean():.2f} %")
    for size in sizes:
        rec = np.array(f.get(f"recall_{size}", []))
        line = f"    markers at {size:>3} px         recall {rec.mean():.3f} ({int(rec.sum())}/{rec.size})"
        if f.get(f"strip_fp_{size}"):
            line += f"  film-edge strips reported as markers: {int(np.sum(f[f'strip_fp_{size}']))}"
        print(line)
    stats = f.get("orientation")
    if stats:
        for (what, source), hits in sorted(stats.items()):
            print(f"    {what:<10} from {source:<18} {np.mean(hits):6.1%} correct ({int(np.sum(hits))}/{len(hits)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="film phantoms (and clean phantoms)")
    parser.add_argument("--data", type=Path, help="folder of the film data set (kept; reused when it exists)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="analysis sizes for markers")
    args = parser.parse_args()
    version = getattr(mammography, "__version__", "?")
    print(f"mammography {version} from {Path(mammography.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "film"
        if not (root / "manifest.csv").is_file():
            from mammography.synth import generate_dataset

            t0 = time.perf_counter()
            generate_dataset(root, n=args.n, seed=0, style="film", class_mix=(1, 1, 1, 1))
            print(f"wrote {args.n} film phantoms to {root} in {time.perf_counter() - t0:.0f} s")
        print(f"film phantoms ({len(pd.read_csv(root / 'manifest.csv'))} images, {root}):")
        for fmt, title in (("dicom", "16-bit RLE DICOM"), ("png", "16-bit PNG export"), ("jpeg", "8-bit JPEG export")):
            _print_block(title, film_figures(root, fmt, args.sizes), args.sizes)
        print(f"clean phantoms ({args.n} images, {CLEAN_SHAPE[0]}x{CLEAN_SHAPE[1]}, as drawn):")
        _print_block("display pixels", clean_figures(args.n, args.sizes), args.sizes)


if __name__ == "__main__":
    main()
