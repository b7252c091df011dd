"""``mammography demo``: the whole chain on built-in phantom mammograms.

1. writes a phantom data set (DICOM files with known dense-tissue and breast
   masks, :func:`mammography.synth.generate_dataset`);
2. trains seeds 42, 43 and 44 at a reduced image size and epoch count
   (:func:`mammography.training.train_demo_runs`);
3. runs report-pack over the three runs: Grad-CAM figures, the attention
   analysis (cross-seed consistency, spurious attention, localisation against
   the phantoms' dense-tissue masks, patterns per class, faithfulness and the
   randomisation check), LaTeX and Markdown
   (:func:`mammography.report.pack.report_pack`);
4. builds the interactive explorer over every validation image
   (:func:`mammography.web.build_explorer`).

Everything goes under one folder (default ``mammography-demo``)::

    mammography-demo/
      phantoms/manifest.csv, dicom/, masks/
      outputs/mammo_efficientnetb0_density/results, results_1, results_2
      Article/assets/..., Article/sections/density_model.tex, Article/02-density.md
      explorer/index.html

Running the demo again regenerates everything in that folder; the phantom
set is kept when its parameters have not changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mammography.errors import ConfigError

__all__ = ["DemoConfig", "DemoResult", "DemoProgress", "run_demo"]

log = logging.getLogger(__name__)

#: file that marks a folder as written by the demo (so re-runs may replace it)
MARKER = ".mammography-demo"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults finish in a few minutes on 2 CPU cores.

    Attributes
    ----------
    out : the demo folder.
    n : number of phantom images (rounded up to whole patients of 4 images).
    size : phantom image size (rows, cols).
    img_size : model input side used for training and Grad-CAM.
    epochs : training epochs per seed.
    seeds : training seeds.
    device : ``auto``, ``cpu`` or ``cuda``.
    explorer : also build the explorer site.
    """

    out: Path = Path("mammography-demo")
    n: int = 200
    size: tuple[int, int] = (512, 416)
    img_size: int = 128
    epochs: int = 12
    seeds: tuple[int, ...] = (42, 43, 44)
    device: str = "auto"
    explorer: bool = True


@dataclass
class DemoResult:
    """What the demo wrote."""

    manifest: Path
    runs: list[Path]
    report: object = None
    explorer_index: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


#: share of the demo's time each stage takes (2 CPU cores, default settings; training = 3 seeds)
STAGE_WEIGHTS = {"phantoms": 0.02, "training": 0.75, "report": 0.18, "explorer": 0.05}


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class DemoProgress:
    """One overall progress line for the demo: share done, time elapsed and an estimate of the time left.

    The stages' shares of the work are :data:`STAGE_WEIGHTS` (renormalised
    over the stages that run); training advances epoch by epoch. The time
    left is extrapolated from the stage under way: its measured pace gives
    its own remaining time and, through the weights, the later stages'
    (before a stage has progressed, from the pace of the demo so far; no
    estimate before 2 % of the work).

    Parameters
    ----------
    stages : the stages that run, in order.
    announce : receives each line.
    clock : seconds (monotonic); a parameter so tests can drive it.
    """

    stages: tuple[str, ...]
    announce: Callable[[str], None] = print
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None
    done: float = 0.0

    def __post_init__(self):
        total = sum(STAGE_WEIGHTS[s] for s in self.stages)
        self.weights = {s: STAGE_WEIGHTS[s] / total for s in self.stages}
        self.started = self.clock() if self.started is None else self.started
        self._stage, self._stage_started = None, self.started

    def _left(self, stage: str, fraction: float, now: float) -> float | None:
        later = sum(self.weights[s] for s in self.stages[self.stages.index(stage) + 1:])
        if fraction > 0:
            stage_total = (now - self._stage_started) / fraction
            return stage_total * (1 - fraction) + stage_total * later / self.weights[stage]
        if self.done >= 0.02:
            return (now - self.started) * (1 - self.done) / self.done
        return None

    def update(self, stage: str, fraction: float, detail: str = "") -> str:
        """Record that ``fraction`` (0..1) of ``stage`` is done; announce and return the line."""
        now = self.clock()
        if stage != self._stage:
            self._stage, self._stage_started = stage, now
        fraction = min(max(float(fraction), 0.0), 1.0)
        before = sum(self.weights[s] for s in self.stages[: self.stages.index(stage)])
        self.done = min(1.0, before + self.weights[stage] * fraction)
        left = self._left(stage, fraction, now)
        text = ("done" if self.done >= 1.0 else "estimating the time left" if left is None
                else f"about {_clock_text(left)} left")
        line = f"[demo {100 * self.done:3.0f} %] {_clock_text(now - self.started)} elapsed, {text}"
        line += f" - {detail}" if detail else ""
        self.announce(line)
        return line


def _check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(
            f"{out} exists and was not written by the demo; choose another folder with --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mammography demo; safe to delete\n")


def _phantoms(config: DemoConfig) -> Path:
    """Write the phantom set, or keep the one already there when its parameters match."""
    from mammography.synth import generate_dataset

    folder = config.out / "phantoms"
    wanted = {"n": config.n, "size": list(config.size), "seed": 0}
    stamp = folder / "demo-params.json"
    manifest = folder / "manifest.csv"
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        log.info("phantoms: keeping %s", manifest)
        return manifest
    if folder.exists():
        shutil.rmtree(folder)
    manifest = generate_dataset(folder, n=config.n, seed=0, size=config.size, progress=True)
    stamp.write_text(json.dumps(wanted))
    return manifest


def _train(config: DemoConfig, manifest: Path, progress: DemoProgress | None = None) -> list[Path]:
    from mammography.training import train_demo_runs

    def on_epoch(index: int, seed: int, epoch: int, epochs: int) -> None:
        if progress is not None:
            progress.update("training", (index + epoch / epochs) / len(config.seeds),
                            f"training seed {seed}, epoch {epoch}/{epochs}")

    outdir = config.out / "outputs" / "mammo_efficientnetb0_density"
    if outdir.exists():
        shutil.rmtree(outdir)  # the demo's own earlier runs: start again at results
    return train_demo_runs(
        manifest,
        outdir,
        seeds=config.seeds,
        img_size=config.img_size,
        epochs=config.epochs,
        device=config.device,
        cache_dir=config.out / ".cache",
        on_epoch=on_epoch,
    )


def _report(config: DemoConfig, runs: list[Path]):
    from mammography.report.pack import ReportOptions, report_pack

    article = config.out / "Article"
    options = ReportOptions(
        assets_dir=article / "assets",
        tex=article / "sections" / "density_model.tex",
        markdown=article / "02-density.md",
        device=config.device,
        cache_dir=config.out / ".cache",
        batch_size=16,
        command="mammography demo",
        faithfulness=True,  # the phantoms' report shows every check, deletion/insertion and sanity included
    )
    return report_pack([str(r) for r in runs], options=options, outputs_root=config.out / "outputs")


def _explorer(config: DemoConfig, runs: list[Path]) -> Path:
    from mammography.web import build_explorer

    summary = build_explorer(
        [str(r) for r in runs],
        config.out / "explorer",
        device=config.device,
        cache_dir=config.out / ".cache",
        outputs_root=config.out / "outputs",
    )
    return Path(summary.index)


def run_demo(config: DemoConfig = DemoConfig(), announce=print) -> DemoResult:
    """Run the whole chain on phantoms; ``announce`` receives one line per stage and the progress lines."""
    config = DemoConfig(**{**config.__dict__, "out": Path(config.out)})
    _check_out_dir(config.out)
    seconds: dict[str, float] = {}
    stages = ("phantoms", "training", "report") + (("explorer",) if config.explorer else ())
    progress = DemoProgress(stages, announce=announce)
    progress.update("phantoms", 0.0, "writing the phantom data set")

    t = time.perf_counter()
    manifest = _phantoms(config)
    seconds["phantoms"] = time.perf_counter() - t
    announce(f"[1/4] phantom data set: {manifest} ({seconds['phantoms']:.0f} s)")
    progress.update("training", 0.0, f"training seeds {', '.join(map(str, config.seeds))}")

    t = time.perf_counter()
    runs = _train(config, manifest, progress)
    seconds["training"] = time.perf_counter() - t
    announce(f"[2/4] trained {len(runs)} runs ({seconds['training']:.0f} s):")
    for run in runs:
        announce(f"      {run}  {_metrics_line(run)}")
    progress.update("report", 0.0, "report-pack: Grad-CAM figures and the attention analysis")

    t = time.perf_counter()
    report = _report(config, runs)
    seconds["report"] = time.perf_counter() - t
    announce(f"[3/4] report-pack ({seconds['report']:.0f} s):")
    for line in _report_lines(report):
        announce(f"      {line}")

    index = None
    if config.explorer:
        progress.update("explorer", 0.0, "building the explorer")
        t = time.perf_counter()
        index = _explorer(config, runs)
        seconds["explorer"] = time.perf_counter() - t
        announce(f"[4/4] explorer ({seconds['explorer']:.0f} s): open file://{index.resolve()}")
        announce(f"      or serve it: mammography explore --serve --out {index.parent}")
    progress.update(stages[-1], 1.0)
    return DemoResult(manifest=manifest, runs=runs, report=report, explorer_index=index, seconds=seconds)


def _metrics_line(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "metrics" / "val_metrics.json").read_text())

    def fmt(key: str) -> str:  # undefined on a tiny or one-class validation set
        return "n/a" if metrics.get(key) is None else f"{metrics[key]:.3f}"

    return (f"seed {summary['seed']}: acc {fmt('acc')}, kappa {fmt('kappa_quadratic')}, "
            f"bal_acc_adj {fmt('bal_acc_adj')} (best epoch {summary['best_epoch']})")


def _report_lines(report) -> list[str]:
    lines = [f"figures: {report.assets_dir}"]
    lines += [f"  {p}" for p in report.written if p.suffix == ".png" and p.parent == report.assets_dir]
    lines += [f"LaTeX: {report.tex}", f"Markdown: {report.markdown}", f"manifest: {report.manifest}"]
    lines += [check.message() for check in report.checks]
    if report.attention_summary:
        lines.append(f"attention analysis ({report.attention_seconds:.0f} s of the report-pack time):")
        lines += [f"  {sentence}" for sentence in report.attention_summary]
    return lines
