#!/usr/bin/env python
"""Grad-CAM engine vs forward-only inference vs the ``grad-cam`` package.

Three modes (``--mode``):

* ``timing`` (default): time and peak memory of forward-only inference, ours
  at ``features.8``, ours at all nine stages and the ``grad-cam`` package;
* ``stages-memory``: peak memory and time of the nine-stage call against a
  forward pass and a final-layer call at the same batch, for this tree and,
  with ``--compare-src``, for another source tree (e.g. an earlier commit:
  ``git worktree add /tmp/base <commit>``, then ``--compare-src /tmp/base/src``);
* ``accuracy``: per method and stage, float32 maps against the same call on a
  float64 copy of the model, and batch maps against one-image calls
  (``--compare-src`` adds the other tree's numbers).

Everything runs on the same EfficientNet-B0 density model (BatchNorm
statistics re-estimated on structured images so logits are not ~1e-14) and
the same random batch (seed 0), channels-last memory format everywhere.

CPU (default: batch 8 x 3 x 512 x 512, 2 threads)::

    python bench/bench_cam.py                 # full run, ~10 min on 2 idle cores
    python bench/bench_cam.py --quick         # smoke run: 2 reps, 20 leak calls

GPU::

    python bench/bench_cam.py --device cuda --batch 32 --dtype fp32
    python bench/bench_cam.py --device cuda --batch 32 --dtype bf16

Nine-stage memory and map accuracy, against the tree at an earlier commit::

    python bench/bench_cam.py --mode stages-memory --compare-src /tmp/base/src
    python bench/bench_cam.py --mode stages-memory --device cuda --batch 128 --compare-src /tmp/base/src
    python bench/bench_cam.py --mode accuracy --compare-src /tmp/base/src

How it measures
---------------
* Time: every variant is timed in ONE process, round-robin (one call of each
  variant per repetition, so load changes hit all of them alike), median of
  ``--reps`` calls after ``--warmup`` calls. Variants: forward-only
  (``torch.inference_mode``), ours at ``features.8``, ours at all nine stages
  ``features.0..8`` (one call), and ``pytorch_grad_cam.GradCAM`` at
  ``features.8`` (on its own copy of the model, because its hooks stay
  registered while the object lives; always fp32, as it cannot handle bf16
  activations). On CUDA, calls are synchronised.
* CPU memory: torch's CPU allocations are invisible to tracemalloc, so each
  variant runs in a FRESH subprocess: resident set size (VmRSS) is read just
  before the first call, the kernel's peak counter is reset
  (``/proc/self/clear_refs`` = 5), the variant is called twice and the peak
  (VmHWM) is read. Reported: the peak increase over the pre-call baseline (the
  memory the computation needs; the ratio uses it) and the absolute peak.
  GPU memory: ``torch.cuda.max_memory_allocated`` over ``memory_allocated``
  before the calls.
* glibc malloc: timings are measured in separate worker processes with (a)
  glibc's defaults, (b) ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``
  set in the environment before the process starts, (c) the same settings
  applied at start-up by :func:`mammography.cam.runtime.tune_malloc`.
* Leak check: ``--leak-calls`` consecutive calls of ours at ``features.8``;
  RSS after the warm-up (call 10) and after the last call.
* ``stages-memory``: every memory figure of a (variant, source tree) comes
  from a FRESH process. CPU: the peak of the bytes torch's CPU allocator
  holds during one call (profiler memory events: tensors and kernel buffers,
  independent of how malloc caches freed blocks; the counterpart of the CUDA
  figure), and the peak resident set increase as above, with glibc's
  defaults and with malloc tuned as the CLI does (which keeps freed memory,
  so its peak includes the heap's fragmentation). CUDA:
  ``torch.cuda.max_memory_allocated`` over ``memory_allocated`` before.
  Time: one process (malloc tuned) calls forward, and final-layer and
  nine-stage Grad-CAM of this tree and of ``--compare-src`` (imported beside
  it), round-robin, so load changes hit them alike; wall clock and process
  CPU time.
* ``accuracy``: an EfficientNet-B0 with BatchNorm statistics re-estimated at
  ``--size`` (default 128 px here), ``--batch`` structured images (default
  8), targets the float64 model's predictions. f32 vs f64: the maximum
  difference of min-max normalised maps; batch vs per-image: the maximum
  difference relative to the per-image map's maximum.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _source_tree(argv: list[str]) -> Path:
    """The tree a worker imports ``mammography`` from: ``--src DIR`` or this checkout's src/."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--src":
            return Path(argv[i + 1]).resolve()
    return ROOT / "src"


sys.path.insert(0, str(_source_tree(sys.argv)))

from mammography.cam import GradCAM  # noqa: E402
from mammography.cam.runtime import tune_malloc  # noqa: E402
from mammography.models import build_density_model  # noqa: E402

TUNED_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
MALLOC_MODES = {
    "default": "glibc defaults",
    "env": "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11 (env)",
    "mallopt": "tune_malloc() at start-up",
}
VARIANTS = {
    "forward": "forward-only (inference_mode)",
    "ours_final": "ours Grad-CAM features.8",
    "ours_stages": "ours Grad-CAM 9 stages",
    "package": "grad-cam pkg GradCAM features.8",
}
TARGETS = {  # ratio name -> (numerator, denominator, bound, "<=" or ">=")
    "time ours/forward": ("ours_final", "forward", 1.10, "<="),
    "time package/ours": ("package", "ours_final", 3.0, ">="),
    "time 9 stages/forward": ("ours_stages", "forward", 3.0, "<="),
}
MEM_TARGET = 1.3
RESULT_TAG = "BENCH_RESULT "


# ---------------------------------------------------------------------------
# model and batch
# ---------------------------------------------------------------------------


def structured_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random Gaussian blobs plus noise (3 equal channels) for BatchNorm calibration."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        r = 0.15 + 0.3 * float(torch.rand(1, generator=g))
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out.append((2.5 * blob - 1 + 0.3 * torch.randn(size, size, generator=g)).expand(3, size, size))
    return torch.stack(out).contiguous()


def calibrated_state(path: Path, size: int = 256) -> None:
    """EfficientNet-B0 with BatchNorm statistics re-estimated on 16 images (``size`` px)."""
    torch.manual_seed(0)
    model = build_density_model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(2):
            model(structured_images(8, size, seed=10 + s))
    torch.save(model.eval().state_dict(), path)


def load_setup(args):
    """(model, batch, autocast factory) exactly as every worker sees them."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_density_model()
    model.load_state_dict(torch.load(args.state, weights_only=True, map_location="cpu"))
    model = model.eval().to(device=device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    amp = torch.bfloat16 if args.dtype == "bf16" else None

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    return model, x, autocast, amp


def make_variant(name: str, model, x, autocast, amp, engine=None):
    """A zero-argument callable running one variant on the batch (``engine``: the
    GradCAM class to use for ours, default this tree's)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    if name == "forward":

        def run():
            with torch.inference_mode(), autocast():
                out = model(x)
            sync()
            return out

    elif name in ("ours_final", "ours_stages"):
        cam = (engine or GradCAM)(model, "features.8" if name == "ours_final" else "stages", autocast=amp)

        def run():
            res = cam(x)
            sync()
            return res

    elif name == "package":
        from pytorch_grad_cam import GradCAM as PackageGradCAM

        pkg_model = copy.deepcopy(model)  # its hooks stay on while the object lives
        pkg = PackageGradCAM(model=pkg_model, target_layers=[pkg_model.features[8]])

        def run():
            # always fp32: under bf16 autocast the package fails converting bf16
            # activations to numpy ("Got unsupported ScalarType BFloat16")
            out = pkg(input_tensor=x, targets=None)  # predicted class, like ours
            sync()
            return out

        run.owner = pkg  # keep it alive with the callable
    else:  # pragma: no cover
        raise ValueError(name)
    return run


# ---------------------------------------------------------------------------
# measurements (run inside workers)
# ---------------------------------------------------------------------------


def proc_status_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_times(args, variants: list[str]) -> dict:
    """Wall-clock and process CPU seconds per call (CPU time: all threads of this process,
    so other processes sharing the cores disturb it less than the wall clock)."""
    model, x, autocast, amp = load_setup(args)
    runs = {v: make_variant(v, model, x, autocast, amp) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.warmup + args.reps):
        for v in variants:  # round-robin: load changes hit every variant alike
            t0, c0 = time.perf_counter(), time.process_time()
            runs[v]()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rep >= args.warmup:
                times[v].append(dt)
                cpu[v].append(dc)
    return {"times": times, "cpu": cpu}


def measure_cpu_memory(args, variant: str, run=None) -> dict:
    if run is None:
        model, x, autocast, amp = load_setup(args)
        run = make_variant(variant, model, x, autocast, amp)
    gc.collect()
    before = proc_status_mb()["VmRSS"]
    reset_ok = reset_peak_rss()
    for _ in range(2):
        out = run()
        del out
    peak = proc_status_mb()["VmHWM"]
    return {"baseline_mb": before, "peak_mb": peak, "delta_mb": peak - before, "reset_ok": reset_ok}


def measure_cuda_memory(args, variant: str, model, x, autocast, amp) -> dict:
    run = make_variant(variant, model, x, autocast, amp)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        out = run()
        del out
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del run
    gc.collect()
    return {"baseline_mb": before / 2**20, "peak_mb": peak / 2**20, "delta_mb": (peak - before) / 2**20}


def measure_leak(args) -> dict:
    model, x, autocast, amp = load_setup(args)
    run = make_variant("ours_final", model, x, autocast, amp)
    rss = []
    cuda = []
    for _ in range(args.leak_calls):
        out = run()
        del out
        rss.append(proc_status_mb()["VmRSS"])
        if x.is_cuda:
            cuda.append(torch.cuda.memory_allocated() / 2**20)
    warm = min(10, len(rss)) - 1
    half = len(rss) // 2
    return {
        "calls": len(rss),
        "rss_after_warmup_mb": rss[warm],
        "rss_last_mb": rss[-1],
        "growth_mb": rss[-1] - rss[warm],
        "second_half_range_mb": max(rss[half:]) - min(rss[half:]),
        "cuda_growth_mb": (cuda[-1] - cuda[warm]) if cuda else None,
    }


# ---------------------------------------------------------------------------
# stages-memory mode: the nine-stage call against a forward pass
# ---------------------------------------------------------------------------

STAGE_VARIANTS = {
    "forward": "forward-only (inference_mode)",
    "ours_final": "Grad-CAM features.8",
    "ours_stages": "Grad-CAM 9 stages",
}
STAGES_MEM_TARGET = 3.0  # nine-stage peak / forward peak
STAGES_TIME_TARGET = 1.0  # nine-stage time, this tree / the compared tree
ACCURACY_TARGET = 1e-4  # batch map vs one-image map, relative to the map's maximum


def allocator_peak_mb(run) -> float:
    """Peak of the bytes torch's CPU allocator holds during one call, from the profiler's
    memory events (every tensor and every kernel buffer torch allocates; independent of
    how malloc caches freed blocks)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
        del out
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def measure_stage_peak(args, variant: str) -> dict:
    """Peak memory of one variant in this fresh process (see the module notes)."""
    model, x, autocast, amp = load_setup(args)
    if x.is_cuda:
        return measure_cuda_memory(args, variant, model, x, autocast, amp)
    run = make_variant(variant, model, x, autocast, amp)
    result = measure_cpu_memory(args, variant, run=run)
    if not args.mallopt:  # counted once, in the glibc-defaults worker; a third call of the same object
        result["tensor_mb"] = allocator_peak_mb(run)
    return result


def load_engine(src: str):
    """The GradCAM class of the mammography package in ``src``, imported beside this
    tree's (which stays what ``import mammography`` gives)."""
    ours = {name: mod for name, mod in sys.modules.items() if name == "mammography" or name.startswith("mammography.")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, src)
    try:
        from mammography.cam import GradCAM as other
    finally:
        sys.path.remove(src)
        for name in [n for n in sys.modules if n == "mammography" or n.startswith("mammography.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    return other


def measure_stage_times(args) -> dict:
    """Round-robin times of forward, and final-layer and nine-stage calls of this tree
    and (``--src``) the compared tree, all in this process."""
    model, x, autocast, amp = load_setup(args)
    engines = {"this tree": GradCAM}
    if args.other_src:
        engines[args.compare_label] = load_engine(args.other_src)
    runs = {("forward", "forward"): make_variant("forward", model, x, autocast, amp)}
    for label, engine in engines.items():
        for v in ("ours_final", "ours_stages"):
            runs[(label, v)] = make_variant(v, model, x, autocast, amp, engine=engine)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for rep in range(args.warmup + args.reps):
        for key, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            if rep >= args.warmup:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    return {"wall": {"/".join(k): v for k, v in wall.items()}, "cpu": {"/".join(k): v for k, v in cpu.items()}}


def stage_workers(args) -> list[tuple[str, str | None]]:
    """(label, source tree) pairs: this tree, then the compared one."""
    trees = [("this tree", None)]
    if args.compare_src:
        trees.append((f"{args.compare_label}", str(args.compare_src)))
    return trees


def orchestrate_stages_memory(args) -> None:
    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"cpu, {args.threads} threads"
    print(
        f"Nine-stage Grad-CAM memory: EfficientNet-B0 (BN re-estimated), batch {args.batch} x 3 x {args.size} x "
        f"{args.size}, {device}, channels_last, {args.dtype}; fresh process per memory figure; torch {torch.__version__}"
    )
    if cuda:
        print("peak MB: torch.cuda.max_memory_allocated over memory_allocated before the calls")
    else:
        print("alloc MB: peak of torch's CPU allocator during one call (profiler); RSS +MB: peak resident set "
              "(VmHWM) over the resident set before the first call, with glibc's defaults and with malloc tuned as the "
              "CLI does (freed memory kept: that peak includes the heap's fragmentation)")
    trees = stage_workers(args)
    memory: dict[tuple[str, str], dict] = {}
    for label, src in trees:
        for v in STAGE_VARIANTS:
            if v == "forward" and src is not None:
                continue  # the model's own forward pass: the same in every tree
            if cuda:
                memory[(label, v)] = {"peak": run_worker(args, "default", "stage-peak", v, src=src)["delta_mb"]}
                continue
            default = run_worker(args, "default", "stage-peak", v, src=src)
            tuned = run_worker(args, "mallopt", "stage-peak", v, src=src)
            memory[(label, v)] = {"tensor": default["tensor_mb"], "rss": default["delta_mb"],
                                  "rss_tuned": tuned["delta_mb"]}
            sys.stdout.flush()
    # both trees' calls round-robin in ONE process, so load changes hit them alike
    timed = run_worker(args, "mallopt", "stage-time", other_src=str(args.compare_src) if args.compare_src else None)
    print_stages_table(args, trees, memory, timed)


def print_stages_table(args, trees, memory: dict, timed: dict) -> None:
    columns = ["peak"] if args.device == "cuda" else ["tensor", "rss", "rss_tuned"]
    titles = {"peak": "peak MB", "tensor": "alloc MB", "rss": "RSS +MB", "rss_tuned": "RSS tuned"}
    fwd_mem = memory[(trees[0][0], "forward")]
    wall = {k: median(v) for k, v in timed["wall"].items()}
    cpu = {k: median(v) for k, v in timed["cpu"].items()}
    header = f"  {'tree':<10} {'variant':<30}" + "".join(f" {titles[c]:>10} {'x fwd':>6}" for c in columns)
    print(header + f" {'wall s':>8} {'x fwd':>6} {'cpu s':>8} {'x fwd':>6}")
    for label, _ in trees:
        for v, name in STAGE_VARIANTS.items():
            m = fwd_mem if v == "forward" else memory[(label, v)]
            key = "forward/forward" if v == "forward" else f"{label}/{v}"
            row = f"  {label:<10} {name:<30}" + "".join(f" {m[c]:10.0f} {m[c] / fwd_mem[c]:6.2f}" for c in columns)
            row += f" {wall[key]:8.3f} {wall[key] / wall['forward/forward']:6.2f}"
            row += f" {cpu[key]:8.3f} {cpu[key] / cpu['forward/forward']:6.2f}"
            print(row)
    print("  ratios:")
    for label, _ in trees:
        stages = memory[(label, "ours_stages")]
        for c in columns:
            ratio = stages[c] / fwd_mem[c]
            name = f"9-stage {titles[c]}/fwd ({label})"
            print(ratio_line(name, ratio, STAGES_MEM_TARGET, "<=") if c != "rss_tuned" else f"  {name:<28} {ratio:6.2f}")
    if len(trees) > 1:
        other = trees[1][0]
        for c in columns:
            ratio = memory[("this tree", "ours_stages")][c] / memory[(other, "ours_stages")][c]
            print(f"  {'9-stage ' + titles[c] + ', this/' + other:<28} {ratio:6.2f}")
        for clock, values in (("wall", wall), ("cpu", cpu)):
            ratio = values["this tree/ours_stages"] / values[f"{other}/ours_stages"]
            print(ratio_line(f"9-stage {clock} time, this/{other}", ratio, STAGES_TIME_TARGET, "<="))


# ---------------------------------------------------------------------------
# accuracy mode: float32 vs float64 and batch vs per-image, per method and stage
# ---------------------------------------------------------------------------


def measure_accuracy(args) -> dict:
    """{method: {stage: (f32 vs f64, batch vs per-image)}} for this worker's tree."""
    from mammography.cam import METHODS, create_cam, normalise_maps

    torch.set_num_threads(args.threads)
    model = build_density_model()
    model.load_state_dict(torch.load(args.state, weights_only=True, map_location="cpu"))
    model = model.eval()
    model64 = copy.deepcopy(model).double()
    x = structured_images(args.batch, args.size, seed=1)
    with torch.no_grad():
        targets = model64(x.double()).argmax(1)  # the same classes in every comparison
    out: dict[str, dict[str, list[float]]] = {}
    for method in sorted(METHODS):
        cam32 = create_cam(method, model, "stages")
        res32 = cam32(x, targets=targets)
        res64 = create_cam(method, model64, "stages")(x, targets=targets)
        singles = [cam32(x[i : i + 1], targets=targets[i : i + 1]) for i in range(len(x))]
        out[method] = {}
        for stage in res32.layers:
            m32, m64 = res32[stage], res64[stage].float()
            f32_f64 = float((normalise_maps(m32) - normalise_maps(m64)).abs().max())
            one = torch.cat([s[stage] for s in singles])
            scale = one.flatten(1).abs().amax(1).clamp_min(1e-30)[:, None, None]
            batch_single = float(((m32 - one).abs() / scale).max())
            out[method][stage] = [f32_f64, batch_single]
    return out


def orchestrate_accuracy(args) -> None:
    print(
        f"Map accuracy: EfficientNet-B0 (BN re-estimated at {args.size} px), {args.batch} structured images x 3 x "
        f"{args.size} x {args.size}, cpu, targets = float64 model's predictions; torch {torch.__version__}"
    )
    print("f32-f64: max |difference| of min-max normalised maps, float32 model vs float64 copy (same call); "
          "batch-1: max |batch map - one-image map| / one-image map's maximum")
    trees = stage_workers(args)
    results = {label: run_worker(args, "default", "accuracy", src=src) for label, src in trees}
    cols = "".join(f" {label + ' f32-f64':>22} {label + ' batch-1':>22}" for label, _ in trees)
    print(f"  {'method':<10} {'stage':<11}{cols}")
    for method in results[trees[0][0]]:
        for stage in results[trees[0][0]][method]:
            row = f"  {method:<10} {stage:<11}"
            for label, _ in trees:
                a, b = results[label][method][stage]
                row += f" {a:22.1e} {b:22.1e}"
            print(row)
    for label, _ in trees:
        worst = max(b for per_stage in results[label].values() for _, b in per_stage.values())
        verdict = "OK" if worst <= ACCURACY_TARGET else "MISSED"
        print(f"  worst batch-1 ({label}): {worst:.1e}  (target <= {ACCURACY_TARGET:.0e})  {verdict}")


# ---------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------


def worker_cmd(args, role: str, variant: str | None = None, mallopt: bool = False, src: str | None = None,
               other_src: str | None = None) -> list[str]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--role", role,
        "--state", str(args.state), "--batch", str(args.batch), "--size", str(args.size),
        "--threads", str(args.threads), "--reps", str(args.reps), "--warmup", str(args.warmup),
        "--leak-calls", str(args.leak_calls), "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    if variant:
        cmd += ["--variant", variant]
    if mallopt:
        cmd += ["--mallopt"]
    if src:
        cmd += ["--src", src]
    if other_src:
        cmd += ["--other-src", other_src]
    if src or other_src:
        cmd += ["--compare-label", args.compare_label]
    return cmd


def run_worker(args, mode: str, role: str, variant: str | None = None, src: str | None = None,
               other_src: str | None = None) -> dict:
    env = dict(os.environ)
    for key in TUNED_ENV:
        env.pop(key, None)
    if mode == "env":
        env.update(TUNED_ENV)
    cmd = worker_cmd(args, role, variant, mallopt=(mode == "mallopt"), src=src, other_src=other_src)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {role} {variant or ''} ({mode}) failed with status {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise SystemExit(f"worker {role} ({mode}) printed no result:\n{proc.stdout}\n{proc.stderr}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio_line(name: str, value: float, bound: float, op: str) -> str:
    ok = value <= bound if op == "<=" else value >= bound
    return f"  {name:<28} {value:6.2f}   (target {op} {bound:.2f})  {'OK' if ok else 'MISSED'}"


def print_mode_table(args, mode_label: str, times: dict, memory: dict | None, leak: dict | None) -> None:
    print(f"\n== {mode_label}")
    med = {v: median(ts) for v, ts in times.items()}
    header = f"  {'variant':<34} {'median s':>9} {'min s':>8} {'img/s':>8} {'x fwd':>6}"
    if memory:
        header += f" {'peak +MB':>9} {'peak MB':>8} {'x fwd':>6}"
    print(header)
    for v, label in VARIANTS.items():
        if v not in med:
            continue
        row = f"  {label:<34} {med[v]:9.3f} {min(times[v]):8.3f} {args.batch / med[v]:8.1f} {med[v] / med['forward']:6.2f}"
        if memory and v in memory:
            m = memory[v]
            row += f" {m['delta_mb']:9.0f} {m['peak_mb']:8.0f} {m['delta_mb'] / memory['forward']['delta_mb']:6.2f}"
        print(row)
    print("  ratios:")
    for name, (num, den, bound, op) in TARGETS.items():
        if num in med and den in med:
            print(ratio_line(name, med[num] / med[den], bound, op))
    if memory and "ours_final" in memory:
        print(ratio_line("peak mem ours/forward", memory["ours_final"]["delta_mb"] / memory["forward"]["delta_mb"],
                         MEM_TARGET, "<="))
    if memory and "package" in memory:
        print(f"  {'peak mem package/ours':<28} {memory['package']['delta_mb'] / memory['ours_final']['delta_mb']:6.2f}")
    if leak:
        print(
            f"  leak: {leak['calls']} calls of ours features.8: RSS {leak['rss_after_warmup_mb']:.0f} MB after "
            f"call 10 -> {leak['rss_last_mb']:.0f} MB after the last (growth {leak['growth_mb']:+.0f} MB; "
            f"range over the second half {leak['second_half_range_mb']:.0f} MB)"
            + (f"; CUDA allocated growth {leak['cuda_growth_mb']:+.1f} MB" if leak.get("cuda_growth_mb") is not None else "")
        )


def orchestrate_cpu(args) -> None:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    leak_modes = [m.strip() for m in args.leak_modes.split(",") if m.strip()]
    print(
        f"EfficientNet-B0 density model (BN re-estimated), batch {args.batch} x 3 x {args.size} x {args.size}, "
        f"cpu, {args.threads} threads, channels_last, {args.dtype}; median of {args.reps} reps after "
        f"{args.warmup} warm-up; torch {torch.__version__}"
    )
    print("peak +MB: increase of the peak resident set over the resident set just before the first call, "
          "fresh process per variant (2 calls)")
    for mode in modes:
        t0 = time.perf_counter()
        times = run_worker(args, mode, "time")["times"]
        memory = None if args.skip_memory else {v: run_worker(args, mode, "memory", v) for v in VARIANTS}
        leak = run_worker(args, mode, "leak") if (mode in leak_modes and args.leak_calls > 0) else None
        print_mode_table(args, f"malloc: {MALLOC_MODES[mode]}  ({time.perf_counter() - t0:.0f} s)", times, memory, leak)
        sys.stdout.flush()


def orchestrate_cuda(args) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    torch.backends.cudnn.benchmark = True
    print(
        f"EfficientNet-B0 density model (BN re-estimated), batch {args.batch} x 3 x {args.size} x {args.size}, "
        f"{torch.cuda.get_device_name()}, channels_last, {args.dtype}; median of {args.reps} reps after "
        f"{args.warmup} warm-up; torch {torch.__version__}"
    )
    times = measure_times(args, list(VARIANTS))["times"]
    model, x, autocast, amp = load_setup(args)
    memory = {}
    for v in VARIANTS:  # the package last: it keeps its previous graph alive
        try:
            memory[v] = measure_cuda_memory(args, v, model, x, autocast, amp)
        except torch.OutOfMemoryError:
            print(f"  {v}: out of GPU memory at batch {args.batch}")
    leak = measure_leak(args) if args.leak_calls > 0 else None
    if "forward" not in memory:
        memory = None
    print_mode_table(args, "CUDA (peak +MB: torch.cuda.max_memory_allocated over memory_allocated before)",
                     times, memory, leak)
    med = {v: median(ts) for v, ts in times.items()}
    print(f"  img/s: forward {args.batch / med['forward']:.0f}, ours {args.batch / med['ours_final']:.0f} "
          f"({med['forward'] / med['ours_final']:.2f}x forward, target >= 0.95), package "
          f"{args.batch / med['package']:.0f} (ours/package {med['package'] / med['ours_final']:.1f}x, target >= 10)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="timing", choices=["timing", "stages-memory", "accuracy"],
                   help="what to measure (see the module notes)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="batch size (8 on CPU, 32 on CUDA; accuracy: 8)")
    p.add_argument("--size", type=int, default=None, help="input side in px (512; accuracy: 128)")
    p.add_argument("--compare-src", type=Path, default=None,
                   help="stages-memory / accuracy: also measure the mammography package in this src/ folder "
                        "(e.g. a checkout of an earlier commit)")
    p.add_argument("--compare-label", default="compared", help="name of --compare-src in the tables")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (meant for CUDA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=None, help="timed calls per variant (5 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (1 CPU, 5 CUDA)")
    p.add_argument("--modes", default="default,env,mallopt", help="CPU malloc modes: default, env, mallopt")
    p.add_argument("--leak-modes", default="default,env", help="malloc modes that run the leak check")
    p.add_argument("--leak-calls", type=int, default=200)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 reps, 20 leak calls, env mode only")
    # internal: worker processes
    p.add_argument("--role", default=None, choices=["time", "memory", "leak", "stage-peak", "stage-time", "accuracy"],
                   help=argparse.SUPPRESS)
    p.add_argument("--src", default=None, help=argparse.SUPPRESS)  # read before the imports: _source_tree
    p.add_argument("--other-src", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--state", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.mode == "accuracy" and cuda:
        p.error("--mode accuracy runs on the CPU (it compares against a float64 model)")
    if args.compare_src is not None and not (args.compare_src / "mammography").is_dir():
        p.error(f"--compare-src {args.compare_src}: no mammography package there (give the src/ folder)")
    args.size = args.size or (128 if args.mode == "accuracy" else 512)
    args.batch = args.batch or (32 if cuda else 8)
    args.reps = args.reps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.quick:
        args.reps, args.leak_calls = 2, 20
        if args.modes == p.get_default("modes"):
            args.modes, args.leak_modes = "env", "env"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    if args.role:
        if args.mallopt:
            tune_malloc()
        if args.role == "time":
            result = measure_times(args, list(VARIANTS))
        elif args.role == "memory":
            result = measure_cpu_memory(args, args.variant)
        elif args.role == "stage-peak":
            result = measure_stage_peak(args, args.variant)
        elif args.role == "stage-time":
            result = measure_stage_times(args)
        elif args.role == "accuracy":
            result = measure_accuracy(args)
        else:
            result = measure_leak(args)
        print(RESULT_TAG + json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.state = Path(tmp) / "bn_calibrated.pt"
        torch.set_num_threads(args.threads)
        calibrated_state(args.state, size=args.size if args.mode == "accuracy" else 256)
        if args.mode == "stages-memory":
            orchestrate_stages_memory(args)
        elif args.mode == "accuracy":
            orchestrate_accuracy(args)
        elif args.device == "cuda":
            orchestrate_cuda(args)
        else:
            orchestrate_cpu(args)


if __name__ == "__main__":
    main()
