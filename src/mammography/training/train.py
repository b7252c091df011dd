"""Train an EfficientNet-B0 BI-RADS density classifier into a run directory.

:func:`train_density` is ``mammography train-density``: read the manifest,
split it by patient (stratified by class), train, and write a run directory
(see :mod:`mammography.training.rundir` for its files).

Choices worth knowing:

* **Split.** The patient-level stratified split is drawn from ``seed`` (so a
  seed names a split as well as an initialisation) unless ``split_seed`` is
  given (several seeds, one split); a ``split`` column in
  the manifest is ignored unless ``use_manifest_split`` is set, in which case
  its ``train``/``val`` rows are used as given (``valid``/``validation`` mean
  ``val``; other values such as ``test`` are left out) after checking that
  no patient is on both sides.
* **Loss.** Cross-entropy weighted by inverse class frequency of the
  training set (``class_weighted``), so the rare classes A and D of a
  10/40/40/10 mix are not ignored; the validation loss uses the same weights.
* **Which epoch is written.** With ``save_best`` the epoch with the highest
  ``bal_acc_adj`` on the validation set (the first one on ties) is written:
  its weights, its predictions and its metrics. Without it the last epoch is
  written. ``best_epoch``/``best_metric`` in ``summary.json`` always name the
  best epoch; ``saved_epoch`` names the epoch whose files were written.
* **Determinism.** Python, NumPy and torch are seeded inside the run only
  (global states are restored afterwards), torch's deterministic algorithms
  are switched on (warn-only), the shuffling has its own generator and each
  DataLoader worker is seeded from it: the same seed and data on the CPU give
  an identical ``val_predictions.csv``.
* **Speed.** Decoded squares are cached on disk (``cache_dir``; default
  :func:`~mammography.data.dataset.default_cache_dir`), the model and batches
  are channels_last, and on CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mammography.data.dataset import MammogramDataset, default_cache_dir
from mammography.data.preprocess import Preprocessing
from mammography.data.splits import check_no_patient_overlap, patient_grouping, split_patients, split_table
from mammography.errors import ConfigError, ManifestError
from mammography.limits import MAX_BATCH_SIZE, check_float, check_img_size, check_int
from mammography.machine import resolve_device
from mammography.models import build_density_model
from mammography.models.checkpoint import load_backbone_weights
from mammography.training.metrics import LABELS, compute_metrics, degenerate_warnings, prediction_collapse
from mammography.training.reproducibility import collect_reproducibility, seed_worker, seeded
from mammography.training.rundir import (
    RUN_FILES,
    discard_staging,
    prediction_table,
    publish_run_dir,
    save_state_dict,
    staging_run_dir,
    write_csv,
    write_history,
    write_json,
)

__all__ = ["TrainConfig", "EpochResult", "EpochSelector", "train_density", "train_on_split", "load_training_manifest"]

log = logging.getLogger(__name__)

ARCH = "efficientnet_b0"
BEST_METRIC = "bal_acc_adj"
DEFAULT_OUTDIR = Path("outputs/mammo_efficientnetb0_density")


@dataclass
class TrainConfig:
    """Everything ``train-density`` needs (the CLI flags, one field each).

    Attributes
    ----------
    csv : manifest CSV (any form :func:`mammography.data.load_manifest` reads).
    outdir : parent of the run folders ``results``, ``results_1`` ...
    dicom_root : folder of ``<AccessionNumber>/*.dcm`` for accession manifests.
    seed : seed of the split, the initialisation, the shuffling and dropout.
    epochs, batch_size, lr, weight_decay : optimisation (AdamW, cosine decay
        of the learning rate over ``epochs``).
    img_size : side of the square model input.
    val_frac : fraction of patients per class used for validation.
    save_best : write the epoch with the best ``bal_acc_adj`` instead of the last.
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    num_workers : DataLoader worker processes (0 = load in the main process).
    cache_dir : decoded-image cache folder; ``None`` = the default folder.
    use_cache : ``False`` decodes every image every epoch (``--no-cache``).
    normalise_laterality : mirror right breasts (chest wall on the left).
    pretrained_weights : local file of backbone weights to start from.
    limit : use only this many manifest rows (a seeded random sample; for
        quick trials).
    use_manifest_split : honour the manifest's ``split`` column (see module doc).
    split_seed : seed of the patient split only; ``None`` = ``seed``. Fix it
        to train several seeds on one split (same validation images).
    class_weighted : weight the loss by inverse class frequency.
    progress : show a tqdm progress bar per epoch.
    command_line : recorded in ``summary.json``; default ``sys.argv``.
    on_epoch : called as ``on_epoch(epoch, epochs)`` after each epoch (overall
        progress of a longer job, e.g. the demo); not recorded.
    """

    csv: Path
    outdir: Path = DEFAULT_OUTDIR
    dicom_root: Path | None = None
    seed: int = 42
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    img_size: int = 512
    val_frac: float = 0.2
    save_best: bool = False
    device: str = "auto"
    num_workers: int = 0
    cache_dir: Path | None = None
    use_cache: bool = True
    normalise_laterality: bool = True
    pretrained_weights: Path | None = None
    limit: int | None = None
    use_manifest_split: bool = False
    split_seed: int | None = None
    class_weighted: bool = True
    progress: bool = True
    command_line: str | list[str] | None = field(default=None, repr=False)
    on_epoch: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        check_int(self.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
        check_img_size(self.img_size, "--img-size")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        check_float(self.weight_decay, "--weight-decay", 0.0)
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"--limit must be at least 2, got {self.limit}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    def preprocessing(self) -> Preprocessing:
        """The run's preprocessing record (written to summary.json; every later command reads it)."""
        return Preprocessing.fit_pad(self.img_size, normalise_laterality=self.normalise_laterality)

    def resolved_cache_dir(self) -> Path | None:
        """The cache folder in use, or ``None`` with ``use_cache=False``."""
        if not self.use_cache:
            return None
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()


@dataclass
class EpochResult:
    """Validation outputs of one epoch (kept in memory for the best epoch)."""

    epoch: int
    metrics: dict
    predictions: pd.DataFrame
    state_dict: dict


class EpochSelector:
    """Decides which epoch's weights, predictions and metrics a run writes.

    The best epoch is the one with the highest ``bal_acc_adj`` (``None``
    counts as worst); on ties the earlier epoch stays best. With
    ``save_best`` the best epoch's outputs are captured (kept in memory)
    whenever a new best appears; without it only the last epoch's are.

    Parameters
    ----------
    save_best : keep the best epoch (``True``) or the last one.
    epochs : number of epochs of the run (to recognise the last one).
    """

    def __init__(self, save_best: bool, epochs: int):
        self.save_best = bool(save_best)
        self.epochs = int(epochs)
        self.best_epoch: int | None = None
        self.best_metrics: dict | None = None
        self._saved: EpochResult | None = None

    def offer(self, epoch: int, metrics: dict, capture) -> bool:
        """Record an epoch's metrics; call ``capture()`` -> EpochResult if its outputs are kept.

        Returns whether the epoch is a new best.
        """
        improved = self.best_metrics is None or _score(metrics) > _score(self.best_metrics)
        if improved:
            self.best_epoch, self.best_metrics = int(epoch), metrics
        if (self.save_best and improved) or (not self.save_best and epoch == self.epochs):
            self._saved = capture()
        return improved

    @property
    def saved(self) -> EpochResult:
        """The outputs to write (best or last epoch)."""
        if self._saved is None:
            raise RuntimeError("no epoch was captured; offer() every epoch up to the last one")
        return self._saved


def load_training_manifest(config: TrainConfig) -> pd.DataFrame:
    """Read the manifest (``--csv``/``--dicom-root``) and apply ``--limit``."""
    from mammography.data import load_manifest

    csv = Path(config.csv).expanduser()
    df = load_manifest(csv, dicom_root=config.dicom_root)
    if len(df) == 0:
        raise ManifestError(f"manifest {csv} has no labelled images to train on")
    if config.limit is not None and config.limit < len(df):
        df = df.sample(n=int(config.limit), random_state=int(config.seed)).sort_index()
    return df.reset_index(drop=True)


def _manifest_split(df: pd.DataFrame, csv: Path) -> pd.Series:
    if "split" not in df.columns:
        raise ManifestError(f"--use-manifest-split: manifest {csv} has no 'split' column")
    names = df["split"].astype(str).str.strip().str.lower()
    split = names.map({"train": "train", "val": "val", "valid": "val", "validation": "val"})
    if not (split == "train").any() or not (split == "val").any():
        raise ManifestError(f"--use-manifest-split: manifest {csv} needs both 'train' and 'val' rows in its split column")
    split = split.fillna("unused").rename("split")
    used = split != "unused"
    try:
        check_no_patient_overlap(df[used], split[used])
    except ValueError as exc:
        raise ManifestError(f"--use-manifest-split: the split column of {csv} is not patient-level: {exc}") from exc
    return split


def _class_weights(train_labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_c)`` of labels 1..4 (0 for absent classes)."""
    counts = np.array([(train_labels == label).sum() for label in LABELS], dtype=np.float64)
    present = counts > 0
    weights = np.zeros(len(LABELS))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(int(seed))
    # a last training batch of one image breaks BatchNorm at small inputs
    drop_last = shuffle and len(dataset) > batch_size and len(dataset) % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def _forward(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(images)
    return logits.float()


def _train_epoch(model, loader, criterion, optimiser, device, bar) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        targets = batch["label"].to(device, non_blocking=True)
        optimiser.zero_grad(set_to_none=True)
        loss = criterion(_forward(model, batch["image"], device), targets)
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(targets)
        count += len(targets)
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.inference_mode()
def _evaluate(model, loader, criterion, device, bar) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean validation loss, (N, 4) probabilities and 0-based targets, in dataset order."""
    model.eval()
    total, probs, targets = 0.0, [], []
    for batch in loader:
        y = batch["label"].to(device, non_blocking=True)
        logits = _forward(model, batch["image"], device)
        total += float(criterion(logits, y)) * len(y)
        probs.append(torch.softmax(logits, dim=1).cpu())
        targets.append(batch["label"])
        bar.update(1)
    probs = torch.cat(probs).numpy().astype(np.float64)
    targets = torch.cat(targets).numpy()
    return total / max(len(targets), 1), probs, targets


def _split_rows(df: pd.DataFrame, split: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    parts = split.to_numpy()
    train_rows = df[parts == "train"].reset_index(drop=True)
    val_rows = df[parts == "val"].reset_index(drop=True)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ManifestError(
            f"the split left {len(train_rows)} training and {len(val_rows)} validation images; both must be non-empty"
        )
    return train_rows, val_rows


def _dataset(rows: pd.DataFrame, config: TrainConfig, cache_dir: Path | None) -> MammogramDataset:
    return MammogramDataset(
        rows["image_path"].tolist(),
        rows["density_label"].astype(int).tolist(),
        cache_dir=cache_dir,
        preprocessing=config.preprocessing(),
        laterality_hints=rows["laterality"].tolist() if "laterality" in rows.columns else None,
    )


def _with_orientation(rows: pd.DataFrame, dataset: MammogramDataset) -> pd.DataFrame:
    """``rows`` with the laterality and view each image was prepared with, and their sources (the
    manifest's view first, as its laterality was for the flip)."""
    from mammography.io.orientation import normalise_view

    resolved = pd.DataFrame([dataset.prepared(i).orientation() for i in range(len(dataset))], index=rows.index)
    if "view" in rows.columns:
        given = rows["view"].map(normalise_view)
        resolved["view"] = given.where(given.notna(), resolved["view"])
        resolved["view_source"] = resolved["view_source"].where(given.isna(), "manifest")
    out = rows.copy()
    for column in resolved.columns:
        out[column] = resolved[column]
    return out


def _history_row(epoch: int, train_loss: float, val_loss: float, metrics: dict, lr: float, seconds: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "acc": metrics["acc"],
        "bal_acc_adj": metrics["bal_acc_adj"],
        "kappa_quadratic": metrics["kappa_quadratic"],
        "macro_f1": metrics["macro_f1"],
        "lr": lr,
        "seconds": round(seconds, 3),
    }


def _fit(config: TrainConfig, device: torch.device, train_set, val_set, val_rows: pd.DataFrame, weights: torch.Tensor):
    """The seeded training loop; returns ``(history rows, EpochSelector)``."""
    y_true = val_rows["density_label"].astype(int).to_numpy()
    pin = device.type == "cuda"
    history: list[dict] = []
    selector = EpochSelector(save_best=config.save_best, epochs=config.epochs)
    with seeded(config.seed):
        model = build_density_model()
        if config.pretrained_weights is not None:
            load_backbone_weights(model, config.pretrained_weights)
        model = model.to(device, memory_format=torch.channels_last)
        criterion = nn.CrossEntropyLoss(weight=weights.to(device) if config.class_weighted else None)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
        train_loader = _loader(train_set, config.batch_size, True, config.seed, config.num_workers, pin)
        val_loader = _loader(val_set, config.batch_size, False, config.seed, config.num_workers, pin)
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimiser.param_groups[0]["lr"]
            with tqdm(
                total=len(train_loader) + len(val_loader),
                desc=f"epoch {epoch}/{config.epochs}",
                unit="batch",
                disable=not config.progress,
                dynamic_ncols=True,
            ) as bar:
                train_loss = _train_epoch(model, train_loader, criterion, optimiser, device, bar)
                val_loss, probs, _ = _evaluate(model, val_loader, criterion, device, bar)
                y_pred = probs.argmax(axis=1) + 1
                metrics = compute_metrics(y_true, y_pred, probs)
                bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", bal_acc_adj=_fmt(metrics[BEST_METRIC]))
            scheduler.step()
            history.append(_history_row(epoch, train_loss, val_loss, metrics, lr, time.perf_counter() - epoch_start))
            improved = selector.offer(
                epoch,
                metrics,
                # only called when this epoch's outputs are kept (new best, or last)
                lambda: EpochResult(
                    epoch=epoch,
                    metrics=metrics,
                    predictions=prediction_table(val_rows, y_true, y_pred, probs),
                    state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                ),
            )
            log.info(
                "epoch %d/%d  train_loss %.4f  val_loss %.4f  acc %.3f  %s %s%s",
                epoch, config.epochs, train_loss, val_loss, metrics["acc"], BEST_METRIC,
                _fmt(metrics[BEST_METRIC]), "  (best)" if improved else "",
            )
            if config.on_epoch is not None:
                config.on_epoch(epoch, config.epochs)
    return history, selector


def train_on_split(
    df: pd.DataFrame,
    split: pd.Series,
    config: TrainConfig,
    run_dir: Path,
    extra_summary: dict | None = None,
) -> Path:
    """Train on the ``"train"`` rows of ``df``, validate on the ``"val"`` rows, write ``run_dir``.

    Parameters
    ----------
    df : canonical manifest (see :func:`mammography.data.load_manifest`).
    split : ``"train"``/``"val"`` per row (other values are left out),
        aligned with ``df``; saved as ``split.csv``.
    config : hyper-parameters and options.
    run_dir : an existing, empty folder that becomes the run directory.
    extra_summary : more keys for ``summary.json`` (e.g. the fold of a CV run).

    Returns
    -------
    ``run_dir``, holding every file listed in :mod:`mammography.training.rundir`.
    """
    config.validate()
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    train_rows, val_rows = _split_rows(df, split)
    write_csv(run_dir / RUN_FILES["split"], split_table(df, split.rename("split")))
    cache_dir = config.resolved_cache_dir()
    train_set = _dataset(train_rows, config, cache_dir)
    val_set = _dataset(val_rows, config, cache_dir)
    val_rows = _with_orientation(val_rows, val_set)  # val_predictions.csv shows what the flip used
    weights = _class_weights(train_rows["density_label"].astype(int).to_numpy())

    started = time.perf_counter()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    history, selector = _fit(config, device, train_set, val_set, val_rows, weights)
    saved = selector.saved

    collapse = prediction_collapse(saved.predictions[[f"p_{c}" for c in "ABCD"]].to_numpy())
    save_state_dict(run_dir / RUN_FILES["checkpoint"], saved.state_dict)
    write_csv(run_dir / RUN_FILES["predictions"], saved.predictions)
    write_json(run_dir / RUN_FILES["metrics"], saved.metrics)
    write_history(run_dir, history, best_epoch=saved.epoch)
    summary = _summary(
        config,
        device=device,
        created_at=created_at,
        train_rows=train_rows,
        val_rows=val_rows,
        weights=weights,
        mean=train_set.preprocessing.mean,
        std=train_set.preprocessing.std,
        best_epoch=selector.best_epoch,
        best_metrics=selector.best_metrics,
        saved=saved,
        seconds=time.perf_counter() - started,
        cache_dir=cache_dir,
        grouping=patient_grouping(df),
        split=split,
    )
    summary["collapse"] = collapse
    summary.update(extra_summary or {})
    summary["warnings"] = degenerate_warnings(saved.predictions["y_true"], saved.predictions["y_pred"])
    for warning in summary["warnings"]:
        log.warning("%s: %s", run_dir, warning)
    # summary.json last: its presence marks a complete run directory
    write_json(run_dir / RUN_FILES["summary"], summary)
    return run_dir


def _score(metrics: dict) -> float:
    value = metrics.get(BEST_METRIC)
    return -math.inf if value is None else float(value)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _summary(config, *, device, created_at, train_rows, val_rows, weights, mean, std, best_epoch, best_metrics, saved, seconds, cache_dir, grouping, split) -> dict:
    def class_counts(rows):
        counts = rows["density_label"].astype(int).value_counts()
        return {str(label): int(counts.get(label, 0)) for label in LABELS}

    hyper = {
        f.name: (str(getattr(config, f.name)) if isinstance(getattr(config, f.name), Path) else getattr(config, f.name))
        for f in fields(config)
        if f.name not in ("csv", "outdir", "dicom_root", "command_line", "progress", "cache_dir", "on_epoch")
    }
    return {
        "seed": int(config.seed),
        "arch": ARCH,
        "num_classes": len(LABELS),
        "classes": [str(label) for label in LABELS],
        "class_letters": ["A", "B", "C", "D"],
        "img_size": int(config.img_size),
        "mean": list(mean),
        "std": list(std),
        "epochs": int(config.epochs),
        "batch_size": int(config.batch_size),
        "lr": float(config.lr),
        "weight_decay": float(config.weight_decay),
        "optimizer": "AdamW",
        "scheduler": "CosineAnnealingLR (per epoch)",
        "loss": "cross_entropy_class_weighted" if config.class_weighted else "cross_entropy",
        "class_weights": [float(w) for w in weights] if config.class_weighted else None,
        "save_best": bool(config.save_best),
        "best_epoch": int(best_epoch),
        "best_metric_name": BEST_METRIC,
        "best_metric": best_metrics.get(BEST_METRIC),
        "saved_epoch": int(saved.epoch),
        "val_metrics": {k: saved.metrics[k] for k in ("acc", "kappa_quadratic", "macro_f1", "auc_ovr", "bal_acc", "bal_acc_adj")},
        "hyperparameters": hyper,
        "preprocess": config.preprocessing().to_record(),
        "manifest": str(Path(config.csv).expanduser().resolve()),
        "dicom_root": str(Path(config.dicom_root).expanduser().resolve()) if config.dicom_root else None,
        "split": {
            "method": "manifest split column" if config.use_manifest_split else "patient-level, stratified by majority class",
            "val_frac": float(config.val_frac),
            "seed": None if config.use_manifest_split else int(config.seed if config.split_seed is None else config.split_seed),
            "file": RUN_FILES["split"],
            "n_train": int(len(train_rows)),
            "n_val": int(len(val_rows)),
            "n_train_patients": int(grouping.keys[split.to_numpy() == "train"].nunique()),
            "n_val_patients": int(grouping.keys[split.to_numpy() == "val"].nunique()),
            "grouping": grouping.rule,
            "grouping_note": grouping.description,
            "train_class_counts": class_counts(train_rows),
            "val_class_counts": class_counts(val_rows),
        },
        "pretrained_weights": str(config.pretrained_weights) if config.pretrained_weights else None,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "device": str(device),
        "amp": "bf16" if device.type == "cuda" else None,
        "channels_last": True,
        "train_seconds": round(float(seconds), 2),
        "created_at": created_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reproducibility": collect_reproducibility(config.command_line),
    }


def train_density(config: TrainConfig) -> Path:
    """Train one density model as ``mammography train-density`` does.

    Parameters
    ----------
    config : see :class:`TrainConfig`.

    Returns
    -------
    The new run directory, ``<outdir>/results`` or the next free
    ``<outdir>/results_N``.
    """
    config = copy.copy(config)
    config.validate()
    df = load_training_manifest(config)
    log.info("patients: %s", patient_grouping(df).description)
    if config.use_manifest_split:
        split = _manifest_split(df, Path(config.csv))
    else:
        split_seed = config.seed if config.split_seed is None else config.split_seed
        split = split_patients(df, val_frac=config.val_frac, seed=split_seed)
    resolve_device(config.device)  # fail before creating the run folder
    # written in a temporary folder (checks OUTDIR is writable now), named results/results_N when complete
    staging = staging_run_dir(config.outdir)
    log.info("training in %s: %d train / %d val images", staging, int((split == "train").sum()), int((split == "val").sum()))
    try:
        train_on_split(df, split, config, staging)
        run_dir = publish_run_dir(staging)
    except BaseException:
        discard_staging(staging)
        raise
    log.info("wrote the run %s", run_dir)
    warn_collapse(run_dir)
    return run_dir


def warn_collapse(run_dir: Path) -> str | None:
    """Log (under the run's final name) the collapse warning its summary.json records; return it."""
    collapse = json.loads((Path(run_dir) / RUN_FILES["summary"]).read_text()).get("collapse")
    if collapse:
        log.warning("%s: %s", run_dir, collapse)
    return collapse
