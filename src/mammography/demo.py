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
from dataclasses import dataclass, field
from pathlib import Path

from mammography.errors import ConfigError

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

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


def _train(config: DemoConfig, manifest: Path) -> list[Path]:
    from mammography.training import train_demo_runs

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
    """Run the whole chain on phantoms; ``announce`` receives one line per stage."""
    config = DemoConfig(**{**config.__dict__, "out": Path(config.out)})
    _check_out_dir(config.out)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    manifest = _phantoms(config)
    seconds["phantoms"] = time.perf_counter() - t
    announce(f"[1/4] phantom data set: {manifest} ({seconds['phantoms']:.0f} s)")

    t = time.perf_counter()
    runs = _train(config, manifest)
    seconds["training"] = time.perf_counter() - t
    announce(f"[2/4] trained {len(runs)} runs ({seconds['training']:.0f} s):")
    for run in runs:
        announce(f"      {run}  {_metrics_line(run)}")

    t = time.perf_counter()
    report = _report(config, runs)
    seconds["report"] = time.perf_counter() - t
    announce(f"[3/4] report-pack ({seconds['report']:.0f} s):")
    for line in _report_lines(report):
        announce(f"      {line}")

    index = None
    if config.explorer:
        t = time.perf_counter()
        index = _explorer(config, runs)
        seconds["explorer"] = time.perf_counter() - t
        announce(f"[4/4] explorer ({seconds['explorer']:.0f} s): open file://{index.resolve()}")
        announce(f"      or serve it: mammography explore --serve --out {index.parent}")
    return DemoResult(manifest=manifest, runs=runs, report=report, explorer_index=index, seconds=seconds)


def _metrics_line(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "metrics" / "val_metrics.json").read_text())
    return (
        f"seed {summary['seed']}: acc {metrics['acc']:.3f}, "
        f"kappa {metrics['kappa_quadratic']:.3f}, bal_acc_adj {metrics['bal_acc_adj']:.3f} "
        f"(best epoch {summary['best_epoch']})"
    )


def _report_lines(report) -> list[str]:
    lines = [f"figures: {report.assets_dir}"]
    lines += [f"  {p}" for p in report.written if p.suffix == ".png" and p.parent == report.assets_dir]
    lines += [f"LaTeX: {report.tex}", f"Markdown: {report.markdown}", f"manifest: {report.manifest}"]
    lines += [check.message() for check in report.checks]
    if report.attention_summary:
        lines.append(f"attention analysis ({report.attention_seconds:.0f} s of the report-pack time):")
        lines += [f"  {sentence}" for sentence in report.attention_summary]
    return lines
