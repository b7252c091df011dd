"""Benchmark the archive job: Ray against one machine, and the per-image costs of a throughput model.

Part 1 -- the same phantoms, side by side on this machine's CPUs:

* the single-machine sweep: ``sweep_run`` per run plus its record written
  (what ``explain`` does; maps and predictions only);
* the archive job in this process (``--engine local``): the same maps plus
  image facts, marker occlusion, per-image metrics and the sharded outputs;
* the archive job on a local Ray instance (``--engine ray``), with and
  without the start of Ray.

Part 2 -- per-image costs at clinical size (``--big-size``, default 3328 x
2560, half JPEG 2000, half uncompressed), one thread: decode
(``read_mammogram``), preprocessing (the rest of ``Preprocessing.prepare`` at
512 px), image facts, forward + Grad-CAM (512 px, batch 8), a forward pass
(marker occlusion), metrics and writes (from the job's own stage timings).
They give the throughput model printed at the end: images per hour per CPU
node and per GPU node, and the nodes for ``--target-images`` in ``--night-hours``.

Usage::

    python bench/bench_archive.py [--n 48] [--img-size 256] [--runs 2] [--cpus 2]
                                  [--big-n 4] [--node-cpus 32] [--gpu-img-s 2153]

``--gpu-img-s`` is the forward + Grad-CAM rate of one GPU at 512 px (default:
2153 img/s, ``bench/bench_cam.py --device cuda --batch 32`` on an H100, fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch

from mammography.data.preprocess import Preprocessing

MASK_COLUMNS = ("roi_path", "breast_mask_path", "artifact_bbox", "dense_fraction", "split")


def phantoms(root: Path, n: int, size, seed: int, compressed_share: float) -> pd.DataFrame:
    """A phantom archive as a real one looks: no masks, no artefact boxes (the job finds them)."""
    from mammography.synth.dataset import generate_dataset

    manifest = generate_dataset(root, n=n, seed=seed, size=size, compressed_share=compressed_share, workers=None)
    table = pd.read_csv(manifest)
    table["image_path"] = [str((root / p).resolve()) for p in table["image_path"]]
    return table.drop(columns=[c for c in MASK_COLUMNS if c in table.columns])


def write_run(folder: Path, table: pd.DataFrame, img_size: int, seed: int) -> Path:
    """A run directory whose model has BatchNorm statistics of these images (a random init's maps are ~0)."""
    from mammography.data.dataset import MammogramDataset
    from mammography.models import build_density_model

    torch.manual_seed(seed)
    model = build_density_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ds = MammogramDataset(list(table["image_path"][:32]), img_size=img_size)
    model.train()
    with torch.no_grad():
        model(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    folder.mkdir(parents=True)
    torch.save(model.eval().state_dict(), folder / "best_model.pth")
    (folder / "summary.json").write_text(json.dumps({
        "seed": seed, "arch": "efficientnet_b0", "img_size": img_size, "mean": None, "std": None,
        "preprocess": {"pipeline": "fit-pad", "normalise_laterality": True, "version": "2"},
    }))
    preds = table[["image_path", "accession", "patient_id", "view", "laterality"]].copy()
    preds.insert(1, "y_true", table["density_label"].to_numpy())
    preds.insert(2, "y_pred", table["density_label"].to_numpy())
    for letter in "ABCD":
        preds[f"p_{letter}"] = 0.25
    preds.to_csv(folder / "val_predictions.csv", index=False)
    (folder / "metrics").mkdir()
    (folder / "metrics" / "val_metrics.json").write_text(json.dumps({"acc": 0.25}))
    return folder


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- part 1


def part1(args, work: Path) -> None:
    import ray

    from mammography.cam.record import write_record
    from mammography.cam.sweep import sweep_run
    from mammography.distributed import explain_archive
    from mammography.distributed.plan import MetricSettings
    from mammography.runs import load_run

    table = phantoms(work / "phantoms", args.n, args.size, 0, 0.2)
    manifest = work / "archive.csv"
    table.to_csv(manifest, index=False)
    runs = [str(write_run(work / "runs" / f"results_{42 + k}", table, args.img_size, 42 + k)) for k in range(args.runs)]
    n = len(table)
    print(f"\n== Part 1: {n} phantoms of {args.size[0]}x{args.size[1]} ({int(0.2 * 100)} % JPEG 2000), "
          f"{args.runs} runs at {args.img_size} px, {args.cpus} CPUs, shard size {args.shard_size}")

    def sweep_all():
        for k, spec in enumerate(runs):
            maps = sweep_run(load_run(spec), device="cpu", batch_size=8, progress=False)
            write_record(maps, work / "sweep" / f"run{k}")

    # one machine with these CPUs: torch's own threads (and one thread, which a busy machine favours)
    t_sweep, t_local, local = {}, {}, {}
    for threads in sorted({1, args.cpus}):
        torch.set_num_threads(threads)
        _, t_sweep[threads] = timed(sweep_all)
        local[threads], t_local[threads] = timed(lambda: explain_archive(
            manifest, runs, work / f"job_local_{threads}", engine="local", shard_size=args.shard_size,
            progress=False))
    best = min(t_sweep.values())
    # without marker occlusion the job's model work is the sweep's (one CAM per image and run)
    torch.set_num_threads(1)
    _, t_local_plain = timed(lambda: explain_archive(
        manifest, runs, work / "job_local_plain", engine="local", shard_size=args.shard_size, progress=False,
        settings=MetricSettings(marker_occlusion=False)))
    _, t_init = timed(lambda: ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False))
    try:
        job, t_ray = timed(lambda: explain_archive(manifest, runs, work / "job_ray", engine="ray",
                                                   shard_size=args.shard_size, progress=False))
        _, t_ray_plain = timed(lambda: explain_archive(
            manifest, runs, work / "job_ray_plain", engine="ray", shard_size=args.shard_size, progress=False,
            settings=MetricSettings(marker_occlusion=False)))
    finally:
        ray.shutdown()
    stages = json.loads((work / "job_ray" / "job.json").read_text())["history"][-1]
    print(f"{'variant (images/s = archive images, all runs)':<56} {'seconds':>8} {'images/s':>9} {'x best sweep':>12}")
    rows = [(f"single-machine sweep + record, {t} thread(s)", t_sweep[t]) for t in t_sweep]
    rows += [(f"archive job in this process (--engine local), {t} thread(s)", t_local[t]) for t in t_local]
    rows += [("archive job on Ray, Ray already started", t_ray), ("archive job on Ray, including ray.init", t_ray + t_init)]
    rows += [("local job without marker occlusion, 1 thread", t_local_plain),
             ("Ray job without marker occlusion", t_ray_plain)]
    for name, seconds in rows:
        print(f"{name:<56} {seconds:8.2f} {n / seconds:9.2f} {seconds / best:12.2f}")
    print(f"overhead ratio, Ray job / best single-machine sweep: {t_ray / best:.2f} "
          f"({(t_ray + t_init) / best:.2f} with ray.init; {t_ray_plain / best:.2f} without marker occlusion); "
          f"Ray job / best local job: {t_ray / min(t_local.values()):.2f}")
    print("Ray job, CPU-seconds per stage summed over workers:",
          ", ".join(f"{k} {v:.1f}" for k, v in stages["stage_seconds"].items()),
          f"| actors {stages['engine']['actors']}")
    for t, result in local.items():
        print(f"local job ({t} thread(s)), CPU-seconds per stage:",
              ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items() if k != "wall"))


# ----------------------------------------------------------------------------- part 2


def median_ms(values) -> float:
    return 1000 * statistics.median(values)


def part2(args, work: Path) -> dict:
    from mammography.cam.methods import create_cam
    from mammography.cam.sweep import cam_batch
    from mammography.distributed import explain_archive
    from mammography.distributed.plan import MetricSettings
    from mammography.analysis.facts import FACTS_WINDOW, facts_from_mammogram
    from mammography.io import prepare_input, read_mammogram, with_orientation

    torch.set_num_threads(1)
    table = phantoms(work / "big", args.big_n, args.big_size, 1, 0.5)
    print(f"\n== Part 2: per-image costs, {len(table)} phantoms of {args.big_size[0]}x{args.big_size[1]} "
          f"(half JPEG 2000), 512 px model input, analysis grid 256 px, 1 thread")
    prep = Preprocessing.fit_pad(512)
    settings = MetricSettings()
    decode = {"JPEG 2000": [], "uncompressed": []}
    prepare, facts = [], []
    prepared = []
    for row in table.to_dict(orient="records"):
        syntax = pydicom.dcmread(row["image_path"], stop_before_pixels=True).file_meta.TransferSyntaxUID
        kind = "JPEG 2000" if syntax.is_compressed else "uncompressed"
        mammogram, t = timed(lambda: read_mammogram(row["image_path"], percentile_window=FACTS_WINDOW))
        decode[kind].append(t)
        # the rest of Preprocessing.prepare (fit-pad): orientation, resize with antialiasing, pad, quantise
        _, t = timed(lambda: prep.quantise(prepare_input(with_orientation(mammogram, laterality_hint=row["laterality"]),
                                                         size=512, normalise_laterality=True)[0]))
        prepare.append(t)
        p = prep.prepare_mammogram(mammogram, row["laterality"])
        prepared.append(p)
        # what the job's facts stage does: the facts found on the decoded image, then placed in the model square
        _, t = timed(lambda: facts_from_mammogram(mammogram, settings.analysis_size).in_model(p.geometry)
                     .background(p.square))
        facts.append(t)
    decode_ms = {k: median_ms(v) for k, v in decode.items() if v}
    preprocess_ms = median_ms(prepare)
    model = write_run(work / "big_run", table, 512, 42)
    from mammography.models.checkpoint import load_density_checkpoint

    net = load_density_checkpoint(model / "best_model.pth").to(memory_format=torch.channels_last)
    batch = (prepared * 8)[:8]
    with create_cam("gradcam", net, None) as cam:
        cam_batch(cam, prep, batch, np.ones(8, np.int64))
        cam_times = [timed(lambda: cam_batch(cam, prep, batch, np.ones(8, np.int64)))[1] / 8 for _ in range(3)]
    x = torch.stack([prep.to_tensor(p) for p in batch]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net(x)
        fwd_times = [timed(lambda: net(x))[1] / 8 for _ in range(3)]
    # metrics and writes at a realistic shard size: the job over copies of the files, one shard
    copies = []
    for k in range(args.copies):
        for row in table.to_dict(orient="records"):
            target = work / "copies" / f"{k}_{Path(row['image_path']).name}"
            target.parent.mkdir(exist_ok=True)
            os.link(row["image_path"], target) if k == 0 else target.write_bytes(Path(row["image_path"]).read_bytes())
            copies.append({**row, "image_path": str(target)})
    manifest = work / "big.csv"
    pd.DataFrame(copies).to_csv(manifest, index=False)
    job = explain_archive(manifest, [str(model)], work / "big_job", engine="local", shard_size=len(copies),
                          progress=False)
    per = {k: 1000 * v / len(copies) for k, v in job.seconds.items() if k != "wall"}
    print(f"(metrics and write measured by the job on {len(copies)} copies in one shard: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in per.items()) + " per image)")
    costs = {
        "decode_jpeg2000_ms": decode_ms.get("JPEG 2000", float("nan")),
        "decode_uncompressed_ms": decode_ms.get("uncompressed", float("nan")),
        "preprocessing_ms": preprocess_ms,
        "facts_ms": median_ms(facts),
        "cam_ms": median_ms(cam_times),
        "forward_ms": median_ms(fwd_times),
        "metrics_ms": per["metrics"],
        "write_ms": per["write"],
        "marker_share": float(pd.read_parquet(work / "big_job" / "table")["n_markers"].gt(0).mean()),
    }
    print(f"{'stage (per image, 1 CPU core)':<46} {'ms':>9}")
    for name, value in costs.items():
        print(f"{name:<46} {value:9.1f}" if name != "marker_share" else f"{'share of images with markers':<46} {value:9.2f}")
    return costs


def model(args, c: dict) -> None:
    for share in sorted({0.0, args.j2k_share, 1.0}):
        node_model(args, c, share)


def node_model(args, c: dict, j2k: float) -> None:
    runs, cores = args.model_runs, args.node_cpus
    decode = j2k * c["decode_jpeg2000_ms"] + (1 - j2k) * c["decode_uncompressed_ms"]
    image_cpu = decode + c["preprocessing_ms"] + c["facts_ms"]                  # once per image
    run_cpu = c["metrics_ms"] + c["write_ms"]                                    # per image and run
    model_cpu = c["cam_ms"] + c["marker_share"] * c["forward_ms"]                # per image and run, on a CPU
    cpu_ms = image_cpu + runs * (run_cpu + model_cpu)
    cpu_node = 3600 * 1000 * cores / cpu_ms
    gpu_side = args.gpu_img_s * args.node_gpus / (runs * (1 + c["marker_share"] * 1.0))  # a forward ~ a CAM on a GPU
    feeder_cores = max(1, cores - args.node_gpus)
    gpu_cpu_side = 1000 * feeder_cores / (image_cpu + runs * run_cpu) 
    gpu_node = 3600 * min(gpu_side, gpu_cpu_side)
    night = args.night_hours
    print(f"\n== Throughput model: {runs} runs per image, {100 * j2k:.0f} % JPEG 2000, nodes of {cores} cores"
          f" (+ {args.node_gpus} GPU for the GPU node), a night = {night:g} h")
    print(f"CPU-ms per image: decode {decode:.0f} + preprocessing {c['preprocessing_ms']:.0f} + facts "
          f"{c['facts_ms']:.0f} + {runs} x (forward+CAM {c['cam_ms']:.0f} + occlusion "
          f"{c['marker_share']:.2f} x {c['forward_ms']:.0f} + metrics {c['metrics_ms']:.0f} + write "
          f"{c['write_ms']:.0f}) = {cpu_ms:.0f}")
    print(f"CPU node: {cpu_node:,.0f} images/hour -> {nodes(args.target_images / (cpu_node * night))} "
          f"for {args.target_images:,} images")
    bound = "its CPUs (decoding)" if gpu_cpu_side < gpu_side else "the GPU"
    print(f"GPU node: GPU side {3600 * gpu_side:,.0f} images/hour ({args.gpu_img_s:g} img/s per GPU), CPU side "
          f"{3600 * gpu_cpu_side:,.0f} images/hour on {feeder_cores} cores -> {gpu_node:,.0f} images/hour, bound by "
          f"{bound} -> {nodes(args.target_images / (gpu_node * night))} for {args.target_images:,} images")


def nodes(needed: float) -> str:
    return f"{needed:.2f} node-nights = {max(1, math.ceil(needed - 1e-9))} node(s)"


def size_arg(text: str):
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="phantoms of part 1")
    parser.add_argument("--size", type=size_arg, default=(1024, 832), help="their size, HxW")
    parser.add_argument("--img-size", type=int, default=256, help="model input of part 1's runs")
    parser.add_argument("--runs", type=int, default=2, help="runs of part 1")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of part 1 (torch threads, Ray's num_cpus)")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--big-n", type=int, default=4, help="clinical-size phantoms of part 2")
    parser.add_argument("--big-size", type=size_arg, default=(3328, 2560))
    parser.add_argument("--copies", type=int, default=8, help="copies of them in part 2's one-shard job")
    parser.add_argument("--model-runs", type=int, default=3, help="runs per image in the model (seeds 42-44)")
    parser.add_argument("--j2k-share", type=float, default=0.5, help="share of JPEG 2000 files in the archive")
    parser.add_argument("--node-cpus", type=int, default=32)
    parser.add_argument("--node-gpus", type=int, default=1)
    parser.add_argument("--gpu-img-s", type=float, default=2153.0)
    parser.add_argument("--target-images", type=int, default=1_000_000)
    parser.add_argument("--night-hours", type=float, default=10.0)
    parser.add_argument("--skip-part1", action="store_true")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_part1:
            part1(args, work)
        model(args, part2(args, work))


if __name__ == "__main__":
    main()
