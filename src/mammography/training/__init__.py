"""Training the density model: train-density, cross-validation, metrics, run writer.

Public entry points (imported lazily, so ``mammography.training.metrics``
can be used without loading the training loop)::

    train_density(TrainConfig(csv=..., outdir=..., seed=42, save_best=True)) -> Path
    cross_validate(TrainConfig(...), folds=5) -> Path
    train_demo_runs(manifest, outdir, seeds=(42, 43, 44)) -> list[Path]
    compute_metrics(y_true, y_pred, probs) -> dict
"""

from mammography._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "mammography.training.train",
    "train_density": "mammography.training.train",
    "cross_validate": "mammography.training.cv",
    "summarise_folds": "mammography.training.cv",
    "train_demo_runs": "mammography.training.demo",
    "DemoSettings": "mammography.training.demo",
    "compute_metrics": "mammography.training.metrics",
    "SCALAR_METRICS": "mammography.training.metrics",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
