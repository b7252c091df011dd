#!/usr/bin/env python
"""Phantom generation speed: drawing alone vs writing DICOM, with and without JPEG 2000.

    python bench/bench_synth.py               # 1024x832, 8 images per variant, 3 rounds
    python bench/bench_synth.py --n 16 --size 2048x1664 --rounds 2

How it measures
---------------
All variants run in ONE process, round-robin (one batch of each variant per
round, so load changes hit all of them alike); the table shows the median
round. Each batch draws the same ``--n`` images (same seed, so the same
phantoms). Variants:

* ``draw only``: :func:`mammography.synth.make_phantom` for each planned
  image, nothing written (the cost of the anatomy and texture);
* ``write, uncompressed``: :func:`generate_dataset` with
  ``compressed_share=0`` (DICOM + two PNG masks + manifest per image);
* ``write, default mix``: ``compressed_share=0.2`` (the CLI default);
* ``write, all JPEG 2000``: ``compressed_share=1`` (lossless, openjpeg);
* ``write, 2 workers``: default mix with ``workers=2`` (process start-up
  included, so it only pays off for larger sets).

Ratios are median speeds relative to ``write, uncompressed``; "best" is the
fastest round (closest to an idle machine). Sizes are the bytes written per
image.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mammography.synth import generate_dataset, jpeg2000_available, make_phantom, parse_size
from mammography.synth.dataset import _plan


def _draw_only(n: int, seed: int, size: tuple[int, int]) -> None:
    for plan in _plan(n, seed, np.array([0.1, 0.4, 0.4, 0.1]), None, 0.2, 0.0, 0.15):
        make_phantom(
            plan.density_class, plan.view, plan.laterality, size,
            seed=[seed, plan.patient, plan.index, 0x5EED],
            dense_fraction=plan.dense_fraction, breast_scale=plan.breast_scale,
        )


def _writer(compressed_share: float, workers: int = 1):
    def run(n: int, seed: int, size: tuple[int, int], out: Path) -> None:
        generate_dataset(out, n=n, seed=seed, size=size, compressed_share=compressed_share, workers=workers)

    return run


def _bytes_per_image(folder: Path, n: int) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=8, help="images per batch (multiple of 4)")
    parser.add_argument("--size", default="1024x832", help="HxW")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = parse_size(args.size)
    n = 4 * max(1, -(-args.n // 4))

    variants = {
        "draw only": None,
        "write, uncompressed": _writer(0.0),
        "write, default mix (20% J2K)": _writer(0.2),
        "write, all JPEG 2000": _writer(1.0),
        "write, 2 workers (default mix)": _writer(0.2, workers=2),
    }
    if not jpeg2000_available():
        print("note: no JPEG 2000 encoder installed; the J2K variants write uncompressed files")
    times: dict[str, list[float]] = {name: [] for name in variants}
    sizes: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        _draw_only(4, args.seed, size)  # warm-up: imports, FFT plans
        for _ in range(args.rounds):
            for name, run in variants.items():
                out = scratch / name.replace(" ", "_").replace(",", "").replace("%", "")
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                if run is None:
                    _draw_only(n, args.seed, size)
                else:
                    run(n, args.seed, size, out)
                times[name].append(time.perf_counter() - start)
                if run is not None:
                    sizes[name] = _bytes_per_image(out, n)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows, cols = size
    print(f"phantom generation, {rows}x{cols}, {n} images per batch, median of {args.rounds} rounds")
    reference = n / statistics.median(times["write, uncompressed"])
    header = (
        f"{'variant':34s} {'s/batch':>8s} {'images/s':>9s} {'best img/s':>11s} "
        f"{'vs uncompr.':>12s} {'MB/image':>9s}"
    )
    print(header)
    print("-" * len(header))
    for name in variants:
        seconds = statistics.median(times[name])
        speed = n / seconds
        mb = f"{sizes[name] / 1e6:9.2f}" if name in sizes else f"{'-':>9s}"
        print(
            f"{name:34s} {seconds:8.2f} {speed:9.2f} {n / min(times[name]):11.2f} "
            f"{speed / reference:11.2f}x {mb}"
        )


if __name__ == "__main__":
    main()
