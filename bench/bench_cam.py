#!/usr/bin/env python
"""Grad-CAM engine vs forward-only inference vs the ``grad-cam`` package.

Everything runs on the same EfficientNet-B0 density model (BatchNorm
statistics re-estimated on structured images so logits are not ~1e-14) and
the same random batch (seed 0), channels-last memory format everywhere.

CPU (default: batch 8 x 3 x 512 x 512, 2 threads)::

    python bench/bench_cam.py                 # full run, ~10 min on 2 idle cores
    python bench/bench_cam.py --quick         # smoke run: 2 reps, 20 leak calls

GPU::

    python bench/bench_cam.py --device cuda --batch 32 --dtype fp32
    python bench/bench_cam.py --device cuda --batch 32 --dtype bf16

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
sys.path.insert(0, str(ROOT / "src"))

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


def calibrated_state(path: Path) -> None:
    """EfficientNet-B0 with BatchNorm statistics re-estimated on 16 images (256 px)."""
    torch.manual_seed(0)
    model = build_density_model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(2):
            model(structured_images(8, 256, seed=10 + s))
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


def make_variant(name: str, model, x, autocast, amp):
    """A zero-argument callable running one variant on the batch."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    if name == "forward":

        def run():
            with torch.inference_mode(), autocast():
                out = model(x)
            sync()
            return out

    elif name in ("ours_final", "ours_stages"):
        cam = GradCAM(model, "features.8" if name == "ours_final" else "stages", autocast=amp)

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
    model, x, autocast, amp = load_setup(args)
    runs = {v: make_variant(v, model, x, autocast, amp) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.warmup + args.reps):
        for v in variants:  # round-robin: load changes hit every variant alike
            t0 = time.perf_counter()
            runs[v]()
            dt = time.perf_counter() - t0
            if rep >= args.warmup:
                times[v].append(dt)
    return {"times": times}


def measure_cpu_memory(args, variant: str) -> dict:
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
# orchestration
# ---------------------------------------------------------------------------


def worker_cmd(args, role: str, variant: str | None = None, mallopt: bool = False) -> list[str]:
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
    return cmd


def run_worker(args, mode: str, role: str, variant: str | None = None) -> dict:
    env = dict(os.environ)
    for key in TUNED_ENV:
        env.pop(key, None)
    if mode == "env":
        env.update(TUNED_ENV)
    cmd = worker_cmd(args, role, variant, mallopt=(mode == "mallopt"))
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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="batch size (8 on CPU, 32 on CUDA)")
    p.add_argument("--size", type=int, default=512)
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
    p.add_argument("--role", default=None, choices=["time", "memory", "leak"], help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--state", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
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
    if args.role:
        if args.mallopt:
            tune_malloc()
        if args.role == "time":
            result = measure_times(args, list(VARIANTS))
        elif args.role == "memory":
            result = measure_cpu_memory(args, args.variant)
        else:
            result = measure_leak(args)
        print(RESULT_TAG + json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.state = Path(tmp) / "bn_calibrated.pt"
        torch.set_num_threads(args.threads)
        calibrated_state(args.state)
        if args.device == "cuda":
            orchestrate_cuda(args)
        else:
            orchestrate_cpu(args)


if __name__ == "__main__":
    main()
