"""What the attention analysis costs next to the sweep, before and after the image facts and batching.

Writes a phantom data set (every image a validation image, burned-in markers
on all, a shortcut square on class 4) and three run directories on that one
split (untrained EfficientNet-B0s, seeds 42/43/44: timings do not depend on
the weights), warms the decoded-image cache, then runs the same worker on
the same images in separate processes, alternating, ``--reps`` times each:

* **after** (this checkout): ``sweep`` (:func:`mammography.cam.sweep.sweep_run`
  of the three runs: predictions and Grad-CAM at ``features.8``), then the
  analysis of the three runs from those maps plus their comparison
  (``analyze_maps`` x 3 and ``compare_runs``: what report-pack adds) with
  the image facts cold (computed: the first pack on a data set), warm (read
  from the cache: every later pack), and warm without the marker occlusion
  (one extra forward pass per image whose markers the model saw);
* **before** (``--before REF``, e.g. ``101814c``: that commit's ``src``
  extracted with ``git archive`` and put first on ``PYTHONPATH``): the same
  sweep and analysis with that code.

It prints seconds (the minimum over the repetitions), milliseconds per image
and run, each analysis's ratio to its own process's sweep, and how far the
after numbers are from the before numbers, column by column (the masks are
now found once per image on the image itself at the analysis size, not per
run on its model input, so masks differ by up to a pixel at their edges).

    python bench/bench_analysis.py --n 48 --size 512x416 --img-size 256 --threads 2 --before 101814c
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SEEDS = (42, 43, 44)


# --------------------------------------------------------------------------- the data


def _write_runs(root: Path, n: int, size: tuple[int, int], img_size: int) -> list[Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from _runs import phantom_rows, write_run  # the tests' run writer (an untrained model, placeholder predictions)

    rows = phantom_rows(root / "data", n=n, seed=0, size=size, shortcut=4, class_mix=(0.25,) * 4)
    return [write_run(root / "runs" / f"results_{seed}", rows, seed=seed, img_size=img_size) for seed in SEEDS]


# --------------------------------------------------------------------------- the worker (one process per code version)


def _worker(spec: dict) -> dict:
    """Sweep and analyse the runs with the ``mammography`` on ``sys.path``; timings in seconds."""
    import dataclasses

    import torch

    import mammography.analysis as analysis
    from mammography.analysis.run_analysis import AnalysisOptions, analyze_maps
    from mammography.cam.sweep import sweep_run
    from mammography.runs import load_run

    torch.set_num_threads(spec["threads"])
    cache = Path(spec["cache"])
    new = hasattr(analysis, "FactStore")
    runs = [load_run(p) for p in spec["runs"]]
    device = torch.device(spec["device"])
    models = [run.load_model(device=device) for run in runs]
    datasets = [run.dataset(cache) for run in runs]
    for ds in datasets:  # report-pack has decoded them already
        for i in range(len(ds)):
            ds.prepared(i)
    options = AnalysisOptions(device=spec["device"], batch_size=spec["batch_size"], cache_dir=cache)
    quiet = dataclasses.replace(options, marker_occlusion=False)
    timings: dict[str, float] = {}

    def timed(name, fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = min(timings.get(name, math.inf), time.perf_counter() - t)
        return out

    def sweep():
        return [sweep_run(run, None, "gradcam", batch_size=options.batch_size, device=device, cache_dir=cache,
                          progress=False, model=model) for run, model in zip(runs, models)]

    def analyse(sweeps, opts, store=None):
        extra = {} if store is None else {"facts": store}
        done = [analyze_maps(run, ds, s.maps[s.layers[-1]], s.probs, model=model, options=opts,
                             check=run.check_predictions(s.probs), **extra)
                for run, ds, s, model in zip(runs, datasets, sweeps, models)]
        return done, analysis.compare_runs(done)

    for _ in range(spec["inner"]):  # interleaved, so a busy moment of the machine hits every step alike
        sweeps = timed("sweep", sweep)
        if new:
            from mammography.analysis.store import FactStore

            shutil.rmtree(cache / "facts", ignore_errors=True)
            cold = FactStore(cache)
            timed("analysis, facts cold", lambda: analyse(sweeps, options, cold))
            timings["facts computed"] = cold.computed
            result = timed("analysis, facts warm", lambda: analyse(sweeps, options, FactStore(cache)))
            timed("analysis, warm, no occlusion", lambda: analyse(sweeps, quiet, FactStore(cache)))
        else:
            result = timed("analysis", lambda: analyse(sweeps, options))
            timed("analysis, no occlusion", lambda: analyse(sweeps, quiet))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    analyses, consistency = result
    for seed, a in zip(SEEDS, analyses):
        a.table.to_csv(out / f"per_image_{seed}.csv", index=False)
    consistency.table.to_csv(out / "consistency.csv", index=False)
    return timings


# --------------------------------------------------------------------------- the comparison


def _before_tree(ref: str, tmp: Path) -> Path:
    tree = tmp / f"before-{ref}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree / "src"


def _run_worker(spec: dict, pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _differences(before: Path, after: Path) -> pd.DataFrame:
    """Per numeric column: mean and largest absolute difference between the two versions' tables."""
    rows = []
    for name in sorted(p.name for p in before.glob("*.csv")):
        a = pd.read_csv(before / name).set_index("image_path").sort_index()
        b = pd.read_csv(after / name).set_index("image_path").sort_index()
        for col in a.columns:
            if col not in b.columns or not pd.api.types.is_numeric_dtype(a[col]) or a[col].dtype == bool:
                continue
            d = (a[col].astype(float) - b[col].astype(float)).abs()
            rows.append({"table": name.removesuffix(".csv"), "column": col, "mean_abs": d.mean(), "max_abs": d.max()})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="validation images (every phantom is one)")
    ap.add_argument("--size", default="512x416", help="phantom size HxW")
    ap.add_argument("--img-size", type=int, default=256, help="model input side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="processes per version, alternating (the minimum is reported)")
    ap.add_argument("--inner", type=int, default=2, help="repetitions of each step inside a process")
    ap.add_argument("--before", default=None, help="git ref of the code to compare with (e.g. 101814c)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = _write_runs(tmp, args.n, (h, w), args.img_size)
        before_src = _before_tree(args.before, tmp) if args.before else None
        versions = {"after": None, **({f"before ({args.before})": before_src} if before_src else {})}
        results: dict[str, list[dict]] = {v: [] for v in versions}
        for rep in range(args.reps):
            for version, path in versions.items():
                spec = {"runs": [str(r) for r in runs], "cache": str(tmp / f"cache-{version.split()[0]}"),
                        "out": str(tmp / f"out-{version.split()[0]}"), "threads": args.threads,
                        "device": args.device, "batch_size": args.batch_size, "inner": args.inner}
                results[version].append(_run_worker(spec, path))
        diff = _differences(tmp / "out-before", tmp / "out-after") if before_src else None

    images = args.n * len(SEEDS)
    print(f"{len(SEEDS)} runs x {args.n} validation images {h}x{w}, model input {args.img_size} px, {args.device}, "
          f"{args.threads} threads; seconds: the minimum of {args.reps} processes x {args.inner} repetitions")
    print(f"{'version':<22}{'step':<32}{'seconds':>9}{'ms/image':>10}{'x sweep':>9}{'pack/sweep':>12}")
    for version, reps in results.items():
        sweep = min(r["sweep"] for r in reps)
        for step in reps[0]:
            if step == "facts computed":
                continue
            sec = min(r[step] for r in reps)
            ratio = sec / sweep
            total = "" if step == "sweep" else f"{1 + ratio:>12.2f}"
            print(f"{version:<22}{step:<32}{sec:>9.2f}{1000 * sec / images:>10.1f}{ratio:>9.2f}{total}")
        if "facts computed" in reps[0]:
            print(f"{version:<22}{'images whose facts were computed':<32}{statistics.median(r['facts computed'] for r in reps):>9.0f}"
                  f"  (of {args.n} images, {images} run-images)")
    if before_src is not None:
        best = {v: {k: min(r[k] for r in reps) for k in reps[0]} for v, reps in results.items()}
        old = best[f"before ({args.before})"]
        print(f"\nanalysis after / before: facts cold {best['after']['analysis, facts cold'] / old['analysis']:.2f}, "
              f"facts warm {best['after']['analysis, facts warm'] / old['analysis']:.2f}, without occlusion "
              f"{best['after']['analysis, warm, no occlusion'] / old['analysis, no occlusion']:.2f}")
    if diff is not None:
        print("\n|after - before| per column, over all images (per_image_<seed>: the three runs; consistency):")
        with pd.option_context("display.width", 160, "display.max_rows", 500):
            print(diff.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
