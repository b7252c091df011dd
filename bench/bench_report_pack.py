#!/usr/bin/env python
"""report-pack wall time vs a plain forward pass over the same validation images.

For the given runs (by default: the demo's three seed runs, trained here on a
phantom set when ``--make-demo DIR`` is given) it measures, in ONE process and
round-robin (one call of each variant per repetition, median of ``--reps``):

* ``forward``: for every run, load the model and run it over all validation
  images in batches under ``torch.inference_mode`` (same Dataset, cache and
  batch size as report-pack), i.e. what "just predicting" costs;
* ``cam pass``: :func:`mammography.report.pack.evaluate_run` for every run
  (Grad-CAM at the main layer + predictions + the CSV check: the part of
  report-pack that touches every image);
* ``pack, no analysis``: the whole :func:`mammography.report.pack.report_pack`
  without the attention analysis (the above, sample selection, figures,
  overlays, layer-wise figure, LaTeX, Markdown, manifest, atomic commit) into
  a temporary article folder;
* ``report-pack``: the same with the attention analysis (the default:
  consistency, spurious attention with marker occlusion, localisation,
  patterns, their figures and tables);
* ``+ faithfulness``: report-pack with ``--faithfulness`` (deletion/insertion
  on 16 images and the randomisation check on 8 per run), with ``--faithfulness-bench``.

The decoded-image cache is warmed first, so decoding DICOM is not counted in
any variant.

Examples::

    python bench/bench_report_pack.py --make-demo /tmp/demo            # phantoms + seeds 42/43/44
    python bench/bench_report_pack.py --runs outputs/mammo_efficientnetb0_density/results*
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _make_demo(root: Path, n: int, size: str, epochs: int | None, img_size: int | None, device: str) -> list[Path]:
    from mammography.synth import generate_dataset
    from mammography.training.demo import train_demo_runs

    manifest = root / "phantoms" / "manifest.csv"
    if not manifest.is_file():
        manifest = generate_dataset(root / "phantoms", n=n, seed=0, size=size)
    runs_root = root / "outputs" / "mammo_efficientnetb0_density"
    existing = sorted(runs_root.glob("results*"))
    if len(existing) >= 3:
        return existing[:3]
    return train_demo_runs(manifest, runs_root, epochs=epochs, img_size=img_size, device=device,
                           cache_dir=root / "cache", progress=False)


def _forward(runs, options, device) -> int:
    from torch.utils.data import DataLoader

    from mammography.data.dataset import MammogramDataset

    n = 0
    for run in runs:
        table = run.predictions
        ds = MammogramDataset(table["image_path"].astype(str).tolist(), labels=table["y_true"].tolist(),
                              img_size=run.img_size, normalise_laterality=run.normalise_laterality,
                              mean=run.mean, std=run.std, cache_dir=options.cache_dir)
        model = run.load_model(device=device).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for batch in DataLoader(ds, batch_size=options.batch_size, shuffle=False, num_workers=0):
                x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
                model(x).softmax(1).cpu()
                n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def _cam_pass(runs, options, device) -> None:
    from mammography.report.pack import evaluate_run

    for run in runs:
        evaluate_run(run, options, device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[], help="run directories or globs")
    p.add_argument("--make-demo", type=Path, metavar="DIR", help="phantoms + demo seed runs in DIR (reused if there)")
    p.add_argument("--n", type=int, default=200, help="phantom images for --make-demo")
    p.add_argument("--size", default="512x416", help="phantom size for --make-demo")
    p.add_argument("--epochs", type=int, help="demo epochs (default: the demo's)")
    p.add_argument("--img-size", type=int, help="demo model input (default: the demo's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, metavar="DIR", help="write the article here (default: a temporary folder)")
    p.add_argument("--faithfulness-bench", action="store_true", help="also time report-pack --faithfulness")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from mammography.report.pack import ReportOptions, _device, report_pack
    from mammography.runs import load_run

    if args.make_demo:
        specs = [str(d) for d in _make_demo(args.make_demo, args.n, args.size, args.epochs, args.img_size,
                                            args.device)]
        cache = args.make_demo / "cache"
    else:
        specs = [m for spec in args.runs for m in (sorted(glob.glob(spec)) or [spec])]
        cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    if not specs:
        p.error("give --runs or --make-demo")
    runs = [load_run(s) for s in specs]
    device = _device(args.device)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    options = ReportOptions(assets_dir=work / "Article" / "assets", tex=work / "Article" / "sections" / "d.tex",
                            markdown=work / "Article" / "d.md", device=args.device, batch_size=args.batch_size,
                            cache_dir=cache, progress=False)

    t0 = time.perf_counter()
    report_pack(specs, options=options)  # warm-up: fills the decoded-image cache, loads libraries
    warm = time.perf_counter() - t0
    n_images = sum(len(r.predictions) for r in runs)

    packs = {"pack, no analysis": dataclasses.replace(options, analysis=False), "report-pack": options}
    if args.faithfulness_bench:
        packs["+ faithfulness"] = dataclasses.replace(options, faithfulness=True)
    times = {"forward": [], "cam pass": [], **{k: [] for k in packs}}
    result = None
    for _ in range(args.reps):
        t = time.perf_counter()
        _forward(runs, options, device)
        times["forward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _cam_pass(runs, options, device)
        times["cam pass"].append(time.perf_counter() - t)
        for name, opts in packs.items():
            t = time.perf_counter()
            out = report_pack(specs, options=opts)
            times[name].append(time.perf_counter() - t)
            result = out if name == "report-pack" else result

    med = {k: statistics.median(v) for k, v in times.items()}
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f" ({args.threads} threads)"
    print(f"runs: {len(runs)} ({', '.join(r.run_id for r in runs)}), validation images: {n_images}, "
          f"img_size: {runs[0].img_size}, batch: {args.batch_size}, device: {device}{gpu}, reps: {args.reps}")
    print(f"first report-pack (cold cache, imports): {warm:.2f} s")
    print(f"{'variant':<20}{'median s':>10}{'img/s':>10}{'x forward':>11}")
    for k, v in med.items():
        print(f"{k:<20}{v:>10.2f}{n_images / v:>10.1f}{v / med['forward']:>11.2f}")
    base = med["pack, no analysis"]
    print(f"drawing + writing (pack without analysis - cam pass): {base - med['cam pass']:.2f} s")
    print(f"attention analysis adds: {med['report-pack'] - base:.2f} s ({med['report-pack'] / base:.2f}x the pack "
          f"without it)")
    if "+ faithfulness" in med:
        print(f"--faithfulness adds: {med['+ faithfulness'] - med['report-pack']:.2f} s more")
    for line in result.attention_summary:
        print(f"attention: {line}")
    for check in result.checks:
        print(f"check: {check.message()}")
    print(f"article: {work / 'Article'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
