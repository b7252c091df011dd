#!/usr/bin/env python
"""report-pack against the sweep it is built on and the model alone, measured side by side in one run.

For the given runs (by default: the demo's three seed runs, trained here on a
phantom set when ``--make-demo DIR`` is given) it measures, in ONE process and
round-robin (one call of each variant per repetition, median of ``--reps``):

* ``model only``: the runs' models over all validation images, already in
  memory as normalised batches on the device (``torch.inference_mode``): what
  the network alone costs;
* ``data path``: the sweep's batches (decoded-image cache, DataLoader workers,
  normalisation on the device) without any model: what feeding it costs;
* ``sweep``: :func:`mammography.cam.sweep.sweep_run` of every run at the
  pack's layers (predictions + Grad-CAM, one pass), with ``--num-workers``
  decoding processes, and with none (``sweep, 0 workers``);
* ``pack, no analysis``: the whole :func:`mammography.report.pack.report_pack`
  without the attention analysis and without a record store (so it sweeps:
  the above, sample selection, figures, overlays, layer-wise figure, LaTeX,
  Markdown, manifest, atomic commit) into a temporary article folder;
* ``report-pack``: the same with the attention analysis (the default:
  consistency, spurious attention with marker occlusion, localisation,
  patterns, their figures and tables);
* ``report-pack, no occlusion``: the same with ``--no-marker-occlusion`` (the
  markers are not painted over: one forward pass less per image with markers);
* ``pack from record`` / ``report-pack from record``: both again with a
  record store that already holds the runs' sweeps (what a second command
  costs: no Grad-CAM at all);
* ``+ faithfulness``: report-pack with ``--faithfulness`` (deletion/insertion
  on 16 images and the randomisation check on 8 per run), with ``--faithfulness-bench``.

The decoded-image cache is warmed first, so decoding DICOM is not counted in
any variant. The ratios printed at the end are the issue's targets: report-pack
over the sweep (on 2 CPU cores: <= 1.3), the sweep's throughput over the
model's (on a GPU: >= 50 %), and where the rest of the pack's time goes.

Examples::

    python bench/bench_report_pack.py --make-demo /tmp/demo            # phantoms + seeds 42/43/44
    python bench/bench_report_pack.py --make-demo /tmp/demo --img-size 512 --n 400
    python bench/bench_report_pack.py --runs outputs/mammo_efficientnetb0_density/results* --device cuda
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batches(runs, options, device):
    """Every run's validation images as the sweep makes them: (run, [normalised batches on the device])."""
    from mammography.cam.sweep import image_batches

    return [(run, [x for x, _ in image_batches(run.dataset(cache_dir=options.cache_dir), options.batch_size,
                                               device, options.num_workers)]) for run in runs]


def _model_only(prepared, device) -> None:
    for run, batches in prepared:
        model = run.load_model(device=device).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for x in batches:
                model(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    _sync(device)


def _data_path(runs, options, device) -> None:
    from mammography.cam.sweep import image_batches

    for run in runs:
        for _ in image_batches(run.dataset(cache_dir=options.cache_dir), options.batch_size, device,
                               options.num_workers):
            pass
    _sync(device)


def _sweep(runs, options, device, num_workers) -> None:
    from mammography.cam.sweep import sweep_run

    for run in runs:
        sweep_run(run, options.layer_names(), options.method, batch_size=options.batch_size, device=device,
                  cache_dir=options.cache_dir, num_workers=num_workers, progress=False)
    _sync(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[], help="run directories or globs")
    p.add_argument("--make-demo", type=Path, metavar="DIR", help="phantoms + demo seed runs in DIR (reused if there)")
    p.add_argument("--n", type=int, default=200, help="phantom images for --make-demo")
    p.add_argument("--size", default="512x416", help="phantom size for --make-demo")
    p.add_argument("--epochs", type=int, help="demo epochs (default: the demo's)")
    p.add_argument("--img-size", type=int, help="demo model input (default: the demo's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", default="auto", help="decoding processes of the sweep (a number or auto)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, metavar="DIR", help="write the article here (default: a temporary folder)")
    p.add_argument("--faithfulness-bench", action="store_true", help="also time report-pack --faithfulness")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from mammography.cam.runtime import tune_malloc
    from mammography.cam.store import MemoryStore
    from mammography.machine import resolve_device, resolve_num_workers
    from mammography.report.pack import ReportOptions, report_pack
    from mammography.runs import load_run

    tune_malloc()  # as the CLI does for commands that run CAM batches
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
    device = resolve_device(args.device)
    workers = resolve_num_workers(args.num_workers, device)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    options = ReportOptions(assets_dir=work / "Article" / "assets", tex=work / "Article" / "sections" / "d.tex",
                            markdown=work / "Article" / "d.md", device=args.device, batch_size=args.batch_size,
                            num_workers=workers, cache_dir=cache, progress=False)
    fresh = MemoryStore  # a new, empty store per call: the pack sweeps (the disk store of the cache is not used)

    t0 = time.perf_counter()
    warm_store = MemoryStore()
    report_pack(specs, options=options, store=warm_store)  # warm-up: decoded-image cache, libraries, the records
    warm = time.perf_counter() - t0
    n_images = sum(len(r.predictions) for r in runs)
    prepared = _batches(runs, options, device)

    no_analysis = dataclasses.replace(options, analysis=False)
    no_occlusion = dataclasses.replace(options, marker_occlusion=False)
    variants = {
        "model only": lambda: _model_only(prepared, device),
        "data path": lambda: _data_path(runs, options, device),
        "sweep": lambda: _sweep(runs, options, device, workers),
        "sweep, 0 workers": lambda: _sweep(runs, options, device, 0),
        "pack, no analysis": lambda: report_pack(specs, options=no_analysis, store=fresh()),
        "report-pack": lambda: report_pack(specs, options=options, store=fresh()),
        "report-pack, no occlusion": lambda: report_pack(specs, options=no_occlusion, store=fresh()),
        "pack from record": lambda: report_pack(specs, options=no_analysis, store=warm_store),
        "report-pack from record": lambda: report_pack(specs, options=options, store=warm_store),
    }
    if args.faithfulness_bench:
        faithful = dataclasses.replace(options, faithfulness=True)
        variants["+ faithfulness"] = lambda: report_pack(specs, options=faithful, store=fresh())
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, call in variants.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    result = report_pack(specs, options=options, store=warm_store)

    med = {k: statistics.median(v) for k, v in times.items()}
    where = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f" ({args.threads} threads)"
    print(f"runs: {len(runs)} ({', '.join(r.run_id for r in runs)}), validation images: {n_images}, "
          f"img_size: {runs[0].img_size}, layers: {' '.join(options.layer_names())}, batch: {args.batch_size}, "
          f"device: {device}{where}, decoding workers: {workers}, reps: {args.reps}")
    print(f"first report-pack (imports, record store filled): {warm:.2f} s")
    print(f"{'variant':<26}{'median s':>10}{'img/s':>10}{'x sweep':>10}")
    for k, v in med.items():
        print(f"{k:<26}{v:>10.2f}{n_images / v:>10.1f}{v / med['sweep']:>10.2f}")
    sweep = med["sweep"]
    print(f"sweep throughput / model-only throughput: {med['model only'] / sweep:.0%} "
          f"(data path alone: {n_images / med['data path']:.0f} img/s)")
    print(f"report-pack / sweep: {med['report-pack'] / sweep:.2f}x with the analysis, "
          f"{med['pack, no analysis'] / sweep:.2f}x without (target on 2 CPU cores: <= 1.3x); "
          f"{med['report-pack, no occlusion'] / sweep:.2f}x with the analysis but no marker occlusion")
    print(f"the rest of the pack without analysis (selection, display decoding, figures, overlays, PNG, LaTeX, "
          f"manifest, commit): {med['pack, no analysis'] - sweep:.2f} s = {med['pack from record']:.2f} s measured "
          f"from the record")
    print(f"the attention analysis adds {med['report-pack'] - med['pack, no analysis']:.2f} s "
          f"({med['report-pack from record'] - med['pack from record']:.2f} s from the record)")
    print(f"of which the marker occlusion (one forward pass per image whose markers the model saw) "
          f"{med['report-pack'] - med['report-pack, no occlusion']:.2f} s")
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
