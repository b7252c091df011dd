"""How much time the attention analysis adds to a report pack.

Writes a phantom data set and a run directory (an untrained EfficientNet-B0:
timings do not depend on the weights), then times, in one process and on the
same images:

* ``cam``          the batched Grad-CAM pass over all validation images (what
                   report-pack already does for its figures);
* ``metrics``      :func:`analyze_maps` on those maps without the model: breast
                   and marker masks, spurious shares, localisation, patterns;
* ``occlusion``    the marker-occlusion forward pass (one per image with markers);
* ``consistency``  :func:`compare_runs` of two such analyses;
* ``faithfulness`` deletion/insertion on ``--faith-images`` images, 20 steps;
* ``sanity``       cascading randomisation on ``--sanity-images`` images;

and prints seconds, milliseconds per image and each step's ratio to the CAM pass.

    python bench/bench_analysis.py --n 64 --size 512x416 --img-size 256 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _write_run(folder: Path, rows: pd.DataFrame, img_size: int, seed: int) -> Path:
    from mammography.models import build_density_model

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(build_density_model().state_dict(), folder / "best_model.pth")
    (folder / "summary.json").write_text(json.dumps({"seed": seed, "img_size": img_size, "mean": None, "std": None,
                                                     "preprocess": {"normalise_laterality": True}}))
    table = rows[["image_path", "roi_path", "breast_mask_path"]].copy()
    table.insert(1, "y_true", rows["density_label"].to_numpy())
    table.insert(2, "y_pred", rows["density_label"].to_numpy())
    for letter in "ABCD":
        table[f"p_{letter}"] = 0.25
    table.to_csv(folder / "val_predictions.csv", index=False)
    (folder / "metrics").mkdir()
    (folder / "metrics" / "val_metrics.json").write_text("{}")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="validation images")
    ap.add_argument("--size", default="512x416", help="phantom size HxW")
    ap.add_argument("--img-size", type=int, default=256, help="model input side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--faith-images", type=int, default=4)
    ap.add_argument("--sanity-images", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mammography.analysis.run_analysis import AnalysisOptions, _build_dataset, _compute_maps, analyze_maps, compare_runs
    from mammography.runs import load_run
    from mammography.synth.dataset import generate_dataset

    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = generate_dataset(tmp / "data", n=args.n, seed=0, size=(h, w), workers=None)
        rows = pd.read_csv(manifest)
        for c in ("image_path", "roi_path", "breast_mask_path"):
            rows[c] = [str(tmp / "data" / p) for p in rows[c]]
        device = torch.device(args.device)
        options = AnalysisOptions(device=args.device, batch_size=args.batch_size, cache_dir=tmp / "cache")
        timings, analyses = {}, []
        for seed in (42, 43):
            run = load_run(_write_run(tmp / f"run{seed}", rows, args.img_size, seed))
            ds = _build_dataset(run, rows["image_path"].tolist(), options)
            for i in range(len(ds)):  # warm the decoded-image cache: report-pack has decoded them already
                ds.prepared(i)
            model = run.load_model(device)
            t = time.perf_counter()
            maps, probs = _compute_maps(model, ds, options, run.run_id)
            timings.setdefault("cam", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            plain = dataclasses.replace(options, marker_occlusion=False)
            analyze_maps(run, ds, maps, probs, model=model, options=plain)
            timings.setdefault("metrics", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            analyses.append(analyze_maps(run, ds, maps, probs, model=model, options=options))
            timings.setdefault("occlusion", []).append(time.perf_counter() - t - timings["metrics"][-1])
        t = time.perf_counter()
        compare_runs(analyses)
        timings["consistency"] = [time.perf_counter() - t]
        extra = AnalysisOptions(device=args.device, batch_size=args.batch_size, cache_dir=tmp / "cache",
                                faithfulness=True, faithfulness_images=args.faith_images)
        t = time.perf_counter()
        analyze_maps(run, ds, maps, probs, model=model, options=extra)
        full = float(np.mean(timings["metrics"])) + float(np.mean(timings["occlusion"]))
        timings["faithfulness"] = [time.perf_counter() - t - full]
        extra = AnalysisOptions(device=args.device, batch_size=args.batch_size, cache_dir=tmp / "cache",
                                sanity=True, sanity_images=args.sanity_images)
        t = time.perf_counter()
        analyze_maps(run, ds, maps, probs, model=model, options=extra)
        timings["sanity"] = [time.perf_counter() - t - full]

    n = args.n
    per = {"cam": n, "metrics": n, "occlusion": n, "consistency": n, "faithfulness": args.faith_images, "sanity": args.sanity_images}
    cam = float(np.mean(timings["cam"]))
    print(f"{n} images {h}x{w}, model input {args.img_size} px, {args.device}, {args.threads} threads")
    print(f"{'step':<14}{'seconds':>10}{'ms/image':>12}{'x CAM pass':>12}")
    for step, values in timings.items():
        sec = float(np.mean(values))
        print(f"{step:<14}{sec:>10.2f}{1000 * sec / per[step]:>12.1f}{sec / cam:>12.2f}")


if __name__ == "__main__":
    main()
