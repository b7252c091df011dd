"""Train the demo's seed runs (42, 43, 44) on the phantom set, quickly.

``mammography demo`` calls :func:`train_demo_runs` after writing the phantom
data set. The settings in :class:`DemoSettings` were chosen so that three
seeds finish in a few minutes on 2 CPU cores *and* the phantom density task
is actually learned (see the class docstring for the figures measured).

All seeds use the manifest's own ``split`` column (the phantom generator
writes a patient-level stratified split), so every run validates on the same
images: cross-seed comparisons of Grad-CAM maps need common images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mammography.training.train import TrainConfig, train_density

__all__ = ["DemoSettings", "DEMO_SEEDS", "train_demo_runs"]

log = logging.getLogger(__name__)

DEMO_SEEDS: tuple[int, ...] = (42, 43, 44)


@dataclass(frozen=True)
class DemoSettings:
    """Reduced training settings for the demo.

    Chosen from a sweep on 200 phantom images (50 patients, 512x416 px,
    class mix 10/40/40/10, the manifest's split: 160 train / 40 validation),
    CPU, 2 torch threads, seeds 42/43/44:

    =========================  ==================  ==================  =========
    setting                    accuracy            quadratic kappa     s / seed
    =========================  ==================  ==================  =========
    128 px, 12 ep, b16, 2e-3   0.925 0.925 0.875   0.944 0.944 0.907   55 52 46
    96 px, 10 ep, b16, 2e-3    0.850 0.825 0.825   0.897 0.870 0.870   34 28 29
    128 px, 8 ep, b16, 2e-3    0.600 0.825 0.825   0.733 0.879 0.865   37 35 34
    128 px, 8 ep, b8, 1e-3     0.825 0.775 0.750   0.879 0.850 0.815   43 42 37
    128 px, 8 ep, b16, 1e-3    0.275 0.600 0.500   0.563 0.648 0.552   41 36 35
    64 px, 12 ep, b16, 2e-3    0.875 0.725 0.800   0.907 0.788 0.846   27 24 23
    =========================  ==================  ==================  =========

    (times on a 16-core Xeon running six such trainings at once, 2 threads
    each; a from-scratch EfficientNet-B0 predicts the majority class for the
    first ~6 epochs and learns the density classes once the cosine schedule
    lowers the learning rate, so fewer than ~10 epochs is unreliable.)

    Attributes
    ----------
    img_size : model input side (px).
    epochs : training epochs per seed.
    batch_size : images per step.
    lr : AdamW learning rate (cosine decay).
    """

    img_size: int = 128
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3


def train_demo_runs(
    manifest: str | Path,
    outdir: str | Path,
    seeds=DEMO_SEEDS,
    img_size: int | None = None,
    epochs: int | None = None,
    *,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    use_manifest_split: bool | None = None,
    progress: bool = True,
    on_epoch=None,
) -> list[Path]:
    """Train one ``--save-best`` run per seed; return their run directories in seed order.

    Parameters
    ----------
    manifest : phantom ``manifest.csv`` (from :func:`mammography.synth.generate_dataset`).
    outdir : parent of the runs (``results``, ``results_1`` ... as train-density names them).
    seeds : seeds to train, default 42, 43, 44.
    img_size, epochs, batch_size, lr : override :class:`DemoSettings`.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    cache_dir : decoded-image cache; ``None`` = the default cache folder.
    use_manifest_split : use the manifest's ``split`` column; default: when
        the manifest has one (the phantom manifest does). Otherwise one patient
        split drawn with the first seed is shared by all seeds.
    progress : tqdm progress bars.
    on_epoch : called as ``on_epoch(run_index, seed, epoch, epochs)`` after each epoch of each seed.

    Returns
    -------
    Run directories, one per seed, in the order of ``seeds``.
    """
    import pandas as pd

    defaults = DemoSettings()
    manifest = Path(manifest)
    seeds = [int(s) for s in seeds]
    if use_manifest_split is None:
        use_manifest_split = "split" in pd.read_csv(manifest, nrows=0).columns
    runs = []
    for index, seed in enumerate(seeds):
        config = TrainConfig(
            csv=manifest,
            outdir=Path(outdir),
            seed=seed,
            epochs=epochs or defaults.epochs,
            batch_size=batch_size or defaults.batch_size,
            lr=lr or defaults.lr,
            img_size=img_size or defaults.img_size,
            save_best=True,
            device=device,
            cache_dir=cache_dir,
            use_manifest_split=use_manifest_split,
            split_seed=seeds[0],
            progress=progress,
            command_line=f"train_demo_runs({manifest}, seed={seed})",
            on_epoch=None if on_epoch is None else (
                lambda epoch, epochs, index=index, seed=seed: on_epoch(index, seed, epoch, epochs)),
        )
        run_dir = train_density(config)
        log.info("demo run seed %d -> %s", seed, run_dir)
        runs.append(run_dir)
    return runs
