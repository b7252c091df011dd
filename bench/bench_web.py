#!/usr/bin/env python
"""Explorer site: size on disk and time to first render in headless Chromium.

    python bench/bench_web.py                       # 500 and 5,000 synthetic images, 3 seeds
    python bench/bench_web.py --n 500 5000 20000    # other sizes
    python bench/bench_web.py --site mammography-demo/explorer   # also measure an existing site (the demo's)
    python bench/bench_web.py --screenshot explorer.png          # also save a screenshot of the largest site

How it measures
---------------
Synthetic sites (for measuring only; the numbers inside are random): each
image is one of 24 phantom mammograms (:func:`mammography.synth.make_phantom`,
512 x 416, laterality-flipped in a 512 px model square like a real run) with
fresh noise, so JPEG sizes are realistic; 3 seeds, each with Grad-CAM-sized
smooth random maps at the default layers (``features.8`` and ``features.6``
16 x 16, ``features.4`` 32 x 32, fused 32 x 32, as at 512 px input), half the
images with an expert-ROI outline (the phantom's dense-tissue mask). They go
through the same writer as real runs (:func:`mammography.web.site.build_site`).

Every site is then opened from file:// in headless Chromium
(:func:`mammography.web.browser.measure_site`, a fresh browser context per
repeat, medians):

* ``first render``: navigation start to the table's first render (the page's
  own clock; includes parsing ``data.js`` with every image's record);
* ``FCP``: first contentful paint as Chromium reports it;
* ``open image``: click on a row until every seed's heatmap is drawn;
* ``filter``: select "wrong" and wait a frame;
* ``start``: files (and bytes) fetched until the first render plus the first
  page's visible thumbnails: what loads before the visitor does anything.

Ratios are against the smallest synthetic site measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mammography.io import fit_to_square
from mammography.synth import make_phantom
from mammography.web.browser import measure_site, save_screenshot
from mammography.web.site import SeedResult, SiteImage, SiteLayer, SiteSeed, build_site

SEEDS = [SiteSeed(f"seed{s}", f"seed {s}", f"synthetic/results_seed{s}", {"acc": 0.7, "kappa_quadratic": 0.6})
         for s in (42, 43, 44)]
LAYERS = [SiteLayer("features.8", "final block (features.8)"), SiteLayer("features.6", "intermediate (features.6)"),
          SiteLayer("features.4", "intermediate (features.4)"), SiteLayer("fused", "fused (mean of the 3 layers)")]
SHAPES = {"features.8": 16, "features.6": 16, "features.4": 32, "fused": 32}


def _smooth_map(rng: np.random.Generator, side: int) -> np.ndarray:
    """A blob-like map: a few Gaussians, like a CAM's look."""
    yy, xx = np.mgrid[:side, :side] / side
    m = np.zeros((side, side))
    for _ in range(3):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        m += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return m


def synthetic_images(n: int, seed: int = 0):
    """``n`` synthetic SiteImages (see the module docstring)."""
    rng = np.random.default_rng(seed)
    bases = []
    for k in range(24):
        cls, view, lat = k % 4 + 1, ("CC", "MLO")[k // 4 % 2], ("L", "R")[k // 8 % 2]
        p = make_phantom(cls, view, lat, shape=(512, 416), seed=k)
        sq, geom = fit_to_square(p.pixels, 512, flip=lat == "R")
        bases.append((p, sq, geom))
    for i in range(n):
        p, sq, geom = bases[i % len(bases)]
        square = np.clip(sq + rng.normal(0, 0.01, sq.shape).astype(np.float32), 0, 1)
        results = {}
        for s in SEEDS:
            probs = rng.dirichlet(np.ones(4))
            results[s.key] = SeedResult(
                pred=int(np.argmax(probs)) + 1, confidence=float(probs.max()), probs=probs.tolist(),
                maps={k: _smooth_map(rng, side) for k, side in SHAPES.items()}, spurious=float(rng.beta(2, 8)),
            )
        yield SiteImage(
            name=f"synthetic/P{i // 4:05d}/{p.laterality}{p.view}_{i:05d}.dcm", y_true=p.density_class,
            square=square, geometry=geom, results=results, roi=p.dense_mask if i % 2 == 0 else None,
            attention_agreement=float(rng.uniform(-0.2, 1.0)), high_agreement=bool(rng.random() < 0.7),
            reasons=(), meta={"view": p.view, "laterality": p.laterality},
        )


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[500, 5000], help="synthetic site sizes (images)")
    ap.add_argument("--site", type=Path, action="append", default=[], help="an existing site to measure too")
    ap.add_argument("--repeats", type=int, default=3, help="page loads per site (medians are shown)")
    ap.add_argument("--keep", type=Path, help="write the synthetic sites here instead of a temporary folder")
    ap.add_argument("--screenshot", type=Path, help="save a screenshot of the largest synthetic site here")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_web_"))
    rows = []
    try:
        for n in sorted(args.n):
            out = work / f"synthetic_{n}"
            t0 = time.perf_counter()
            build_site(out, synthetic_images(n), SEEDS, LAYERS, title=f"synthetic {n}", n_images=n)
            build_s = time.perf_counter() - t0
            rows.append((f"synthetic {n}", out, build_s, measure_site(out, repeats=args.repeats)))
            print(f"measured synthetic {n} ({build_s:.0f} s to build)", flush=True)
        for site in args.site:
            rows.append((str(site), site, None, measure_site(site, repeats=args.repeats)))
        if args.screenshot and args.n:
            save_screenshot(work / f"synthetic_{max(args.n)}", args.screenshot)
            print(f"screenshot: {args.screenshot}")

        base = next((t for name, _, _, t in rows if name.startswith("synthetic")), rows[0][3])
        head = (f"{'site':<34}{'images':>7}{'files':>8}{'size':>10}{'data.js':>9}{'start':>15}"
                f"{'first render':>13}{'FCP':>7}{'open image':>11}{'filter':>8}{'build':>8}")
        print()
        print(head)
        print("-" * len(head))
        for name, folder, build_s, t in rows:
            data_js = (Path(folder) / "data.js").stat().st_size
            fcp = f"{t.first_paint_ms:.0f}" if t.first_paint_ms is not None else "-"
            build = f"{build_s:.0f} s" if build_s is not None else "-"
            print(f"{name:<34}{t.n_images:>7}{t.n_files:>8}{_mb(t.bytes):>10}{_mb(data_js):>9}"
                  f"{t.start_requests:>5} / {_mb(t.start_bytes):>7}{t.first_render_ms:>10.0f} ms{fcp:>7}"
                  f"{t.open_image_ms:>8.0f} ms{t.filter_ms:>5.0f} ms{build:>8}")
        print()
        print("ratios to the first synthetic site (same run):")
        for name, _, _, t in rows:
            print(f"  {name:<32} images x{t.n_images / base.n_images:6.1f}   size x{t.bytes / base.bytes:6.1f}   "
                  f"start bytes x{t.start_bytes / max(1, base.start_bytes):5.2f}   "
                  f"first render x{t.first_render_ms / base.first_render_ms:5.2f}   "
                  f"open image x{t.open_image_ms / base.open_image_ms:5.2f}")
            print(f"  {'':<32} loaded at start: {100 * t.start_bytes / t.bytes:.2f} % of the site")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
