"""CAMs for every validation image of a run, stored once for all later figures.

``mammography explain --run R`` reads the run (:func:`mammography.runs.load_run`),
rebuilds its model input for each image in ``val_predictions.csv``
(:class:`mammography.data.dataset.MammogramDataset` with the run's size,
normalisation and laterality rule), computes the CAMs in batches and writes

* ``cam_<method>.npz`` (compressed): the low-resolution maps per layer with
  logits, probabilities, the explained classes and each image's geometry,
  enough to redraw any figure or measure any map without the model;
* ``cam_<method>_predictions.csv``: one row per image with the recomputed
  prediction next to the one stored in the run (a disagreement means the
  checkpoint or the preprocessing no longer matches the run's own record).

Read the archive back with :func:`load_explanations`.

Archive keys
------------
``maps/<layer>`` float32 (N, h, w), or (N, 4, h, w) for ``targets="all"``;
``logits``, ``probs`` float32 (N, 4); ``targets`` int64 (N,) or (N, 4),
0-based; ``y_true`` int64 (N,) 1..4; ``image_path`` str (N,); ``layers`` str
(L,); ``geometry_original_shape``, ``geometry_resized_shape``,
``geometry_offset`` int64 (N, 2); ``geometry_flipped`` bool (N,); scalars
``method``, ``target_mode``, ``run_id``, ``run_path``, ``checkpoint_sha256``,
``img_size``, ``format_version``; ``mean``, ``std`` float64 (3,).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mammography.cam.layers import LayerSpec
from mammography.cam.methods import create_cam
from mammography.cam.result import CAMResult
from mammography.data.labels import CLASS_LETTERS
from mammography.errors import ConfigError, RunError
from mammography.io.geometry import Geometry

__all__ = [
    "ExplainOutput",
    "Explanations",
    "explain_run",
    "explain_runs",
    "explanation_paths",
    "load_explanations",
    "parse_target",
    "run_folder_name",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TARGET_MODES = ("predicted", "true", "all")
#: where archives go when no folder is given: one sub-folder per run id
DEFAULT_OUT = Path("outputs/explanations")


@dataclass(frozen=True)
class ExplainOutput:
    """What :func:`explain_run` wrote for one run.

    Attributes
    ----------
    run_id : the run's id.
    npz_path : the compressed archive of maps, logits and probabilities.
    csv_path : per-image predictions.
    n_images : number of validation images explained.
    n_agree : images whose recomputed predicted class equals the run's stored one.
    layers : layer names, in the order stored.
    method : CAM method name.
    """

    run_id: str
    npz_path: Path
    csv_path: Path
    n_images: int
    n_agree: int
    layers: tuple[str, ...]
    method: str


@dataclass(frozen=True)
class Explanations:
    """An archive written by :func:`explain_run`, read back (all numpy, CPU).

    Attributes
    ----------
    maps : layer -> float32 (N, h, w) or (N, 4, h, w).
    logits, probs : float32 (N, 4).
    targets : int64 (N,) or (N, 4), 0-based classes explained.
    y_true : int64 (N,) BI-RADS labels 1..4.
    image_paths : list of N absolute paths, in ``val_predictions.csv`` order.
    geometries : one :class:`~mammography.io.geometry.Geometry` per image.
    method, target_mode, run_id, run_path, checkpoint_sha256 : provenance.
    img_size : model input side.
    mean, std : input normalisation used.
    """

    maps: dict[str, np.ndarray]
    logits: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    y_true: np.ndarray
    image_paths: list[str]
    geometries: list[Geometry]
    method: str
    target_mode: str
    run_id: str
    run_path: str
    checkpoint_sha256: str
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.maps)

    def __len__(self) -> int:
        return len(self.image_paths)

    def result(self, indices: Sequence[int] | slice | None = None) -> CAMResult:
        """The stored maps (all, or the selected images) as a :class:`CAMResult`
        on the CPU, for its normalise / upsample / to_original / fuse helpers."""
        sel = slice(None) if indices is None else indices
        return CAMResult(
            maps={n: torch.from_numpy(np.ascontiguousarray(m[sel])) for n, m in self.maps.items()},
            logits=torch.from_numpy(np.ascontiguousarray(self.logits[sel])),
            probs=torch.from_numpy(np.ascontiguousarray(self.probs[sel])),
            targets=torch.from_numpy(np.ascontiguousarray(self.targets[sel])),
            method=self.method,
            input_size=(self.img_size, self.img_size),
        )


def run_folder_name(run_id: str) -> str:
    """Folder name for a run id (a fold's ``"results_k3_seed42/fold_1"`` becomes
    ``"results_k3_seed42__fold_1"``)."""
    return run_id.replace("/", "__").replace("\\", "__")


def explanation_paths(out_dir: str | Path, method: str) -> tuple[Path, Path]:
    """(npz, csv) file paths :func:`explain_run` uses in ``out_dir`` for ``method``."""
    safe = method.replace("+", "p")  # gradcam++ -> gradcampp: no '+' in file names
    out_dir = Path(out_dir)
    return out_dir / f"cam_{safe}.npz", out_dir / f"cam_{safe}_predictions.csv"


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda given but no CUDA GPU is available; use --device cpu")
    return dev


def _target_spec(targets, labels0: torch.Tensor):
    """What to pass to the CAM for one batch (labels0: 0-based true classes)."""
    if targets == "true":
        if bool((labels0 < 0).any()):
            raise RunError("some validation images have no true label, so --target true is impossible")
        return labels0
    return targets


def parse_target(text: str) -> str | int:
    """A command-line target: ``predicted``, ``true``, ``all``, or a class as
    ``1..4`` / ``A..D`` (returned 0-based)."""
    value = str(text).strip()
    if value.lower() in TARGET_MODES:
        return value.lower()
    if value.upper() in CLASS_LETTERS:
        return CLASS_LETTERS.index(value.upper())
    if value.isdigit() and 1 <= int(value) <= len(CLASS_LETTERS):
        return int(value) - 1
    raise ConfigError(f"--target must be predicted, true, all, 1..4 or A..D, got {text!r}")


def _check_targets(targets) -> str:
    if isinstance(targets, str):
        if targets not in TARGET_MODES:
            raise ConfigError(f"unknown target {targets!r}; use predicted, true, all or a class index 0..3")
        return targets
    if isinstance(targets, (int, np.integer)) and 0 <= int(targets) < len(CLASS_LETTERS):
        return f"class {CLASS_LETTERS[int(targets)]}"
    raise ConfigError(f"target class must be 0..{len(CLASS_LETTERS) - 1} (0 = BI-RADS A), got {targets!r}")


def _atomic_write(path: Path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def explain_run(
    run,
    layers: LayerSpec = None,
    method: str = "gradcam",
    out_dir: str | Path | None = None,
    *,
    targets: str | int = "predicted",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    autocast: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ExplainOutput:
    """Compute and store CAMs for every validation image of a run.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    layers : target layers (``None`` = ``"features.8"``, a name, a list, or
        ``"stages"``); see :func:`mammography.cam.layers.resolve_layers`.
    method : ``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam`` or ``layercam``.
    out_dir : folder for the two files; default ``outputs/explanations/<run id>``
        (see :func:`run_folder_name`); the run directory itself is never written.
    targets : ``"predicted"`` (default), ``"true"`` (the label), ``"all"``
        (every class; maps (N, 4, h, w)) or a 0-based class index.
    batch_size : images per CAM call.
    device : ``"cpu"``, ``"cuda"`` or ``"auto"``.
    autocast : ``None``, ``"bf16"`` or ``"fp16"`` (CUDA).
    cache_dir : decoded-image cache folder (see
        :class:`~mammography.data.dataset.MammogramDataset`); ``None`` decodes
        every image.
    progress : show a tqdm progress bar.

    Returns
    -------
    ExplainOutput

    Raises
    ------
    RunError, CheckpointError, ImageReadError, ConfigError
        Unreadable run, checkpoint or image; bad option.
    """
    from tqdm.auto import tqdm

    from mammography.data.dataset import MammogramDataset, laterality_hints
    from mammography.runs import Run, load_run

    target_mode = _check_targets(targets)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    run = run if isinstance(run, Run) else load_run(run)
    dev = _resolve_device(device)
    table = run.predictions
    if len(table) == 0:
        raise RunError(f"{run.path / 'val_predictions.csv'} has no rows: nothing to explain")
    y_true = table["y_true"].to_numpy(dtype=np.int64)

    model = run.load_model(device=dev).to(memory_format=torch.channels_last)
    cam = create_cam(method, model, layers, autocast=autocast)
    dataset = MammogramDataset(
        list(table["image_path"]),
        img_size=run.img_size,
        normalise_laterality=run.normalise_laterality,
        mean=run.mean,
        std=run.std,
        cache_dir=cache_dir,
        laterality_hints=laterality_hints(table),
    )

    parts: list[dict[str, np.ndarray]] = []
    geometries: list[Geometry] = []
    starts = range(0, len(dataset), int(batch_size))
    bar = tqdm(starts, desc=f"explain {run.run_id}", unit="batch", disable=not progress)
    for start in bar:
        idx = range(start, min(start + int(batch_size), len(dataset)))
        prepared = [dataset.prepared(i) for i in idx]  # decoded once: square and geometry
        geometries.extend(p.geometry for p in prepared)
        images = torch.stack([dataset.to_tensor(p.square) for p in prepared])
        labels0 = torch.as_tensor(y_true[start : start + len(idx)] - 1)
        result = cam(images, targets=_target_spec(targets, labels0))
        parts.append(result.numpy())

    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    layer_names = cam.layer_names
    target_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT / run_folder_name(run.run_id)
    npz_path, csv_path = explanation_paths(target_dir, cam.name)
    payload = {
        **arrays,
        "y_true": y_true,
        "image_path": np.asarray([str(p) for p in table["image_path"]], dtype=np.str_),
        "layers": np.asarray(layer_names, dtype=np.str_),
        "geometry_original_shape": np.asarray([g.original_shape for g in geometries], dtype=np.int64),
        "geometry_resized_shape": np.asarray([g.resized_shape for g in geometries], dtype=np.int64),
        "geometry_offset": np.asarray([g.offset for g in geometries], dtype=np.int64),
        "geometry_flipped": np.asarray([g.flipped for g in geometries], dtype=bool),
        "method": np.asarray(cam.name),
        "target_mode": np.asarray(target_mode),
        "run_id": np.asarray(run.run_id),
        "run_path": np.asarray(str(run.path)),
        "checkpoint_sha256": np.asarray(run.checkpoint_sha256),
        "img_size": np.asarray(run.img_size, dtype=np.int64),
        "mean": np.asarray(run.mean, dtype=np.float64),
        "std": np.asarray(run.std, dtype=np.float64),
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
    }
    _atomic_write(npz_path, lambda fh: np.savez_compressed(fh, **payload))

    predictions = _prediction_table(table, arrays["probs"], arrays["targets"])
    _atomic_write(csv_path, lambda fh: predictions.to_csv(fh, index=False))
    n_agree = int(predictions["agrees_with_run"].sum())
    if n_agree < len(predictions):
        log.warning(
            "%s: the recomputed prediction differs from val_predictions.csv for %d of %d images "
            "(checkpoint or preprocessing differs from the run's record)",
            run.run_id, len(predictions) - n_agree, len(predictions),
        )
    return ExplainOutput(
        run_id=run.run_id,
        npz_path=npz_path,
        csv_path=csv_path,
        n_images=len(predictions),
        n_agree=n_agree,
        layers=tuple(layer_names),
        method=cam.name,
    )


def explain_runs(
    specs,
    layers: LayerSpec = None,
    method: str = "gradcam",
    out_dir: str | Path = DEFAULT_OUT,
    *,
    outputs_root: str | Path = Path("outputs"),
    **kwargs,
) -> list[ExplainOutput]:
    """:func:`explain_run` for every run named by ``specs``.

    Parameters
    ----------
    specs : run directories, names under the outputs folder or globs (see
        :func:`mammography.runs.resolve_runs`); a cross-validation root
        stands for each of its folds.
    layers, method, kwargs : as for :func:`explain_run`.
    out_dir : each run's files go to ``out_dir/<run id>`` (see :func:`run_folder_name`).
    outputs_root : the default outputs folder.
    """
    from mammography.runs import is_cv_root, load_cv_run, load_run, resolve_runs

    outputs: list[ExplainOutput] = []
    for path in resolve_runs(specs, outputs_root=outputs_root):
        runs = load_cv_run(path).folds if is_cv_root(path) else [load_run(path)]
        for run in runs:
            outputs.append(explain_run(run, layers, method, Path(out_dir) / run_folder_name(run.run_id), **kwargs))
    return outputs


def _prediction_table(table: pd.DataFrame, probs: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """Per-image predictions: recomputed columns first, then the run's own."""
    y_pred = probs.argmax(1) + 1
    out = pd.DataFrame({
        "image_path": table["image_path"].astype(str).to_numpy(),
        "y_true": table["y_true"].to_numpy(dtype=np.int64),
        "y_pred": y_pred,
        "confidence": probs.max(1),
    })
    for k, letter in enumerate(CLASS_LETTERS):
        out[f"p_{letter}"] = probs[:, k]
    if targets.ndim == 1:
        out["cam_target"] = targets + 1  # the class the map explains, 1..4
    out["run_y_pred"] = table["y_pred"].to_numpy(dtype=np.int64)
    out["agrees_with_run"] = out["y_pred"].to_numpy() == out["run_y_pred"].to_numpy()
    for column in ("accession", "patient_id", "view", "view_source", "laterality", "laterality_source"):
        if column in table.columns:
            out[column] = table[column].to_numpy()
    return out


def load_explanations(path: str | Path) -> Explanations:
    """Read an archive written by :func:`explain_run`.

    Raises
    ------
    RunError
        The file is missing or is not such an archive.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"explanations file {path} does not exist; write it with 'mammography explain --run RUN'")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is not a readable .npz archive ({exc}); rerun 'mammography explain'") from None
    needed = ("logits", "probs", "targets", "layers", "image_path", "format_version")
    missing = [k for k in needed if k not in data]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}: not written by 'mammography explain'")
    if int(data["format_version"]) > FORMAT_VERSION:
        raise RunError(f"{path} was written by a newer mammography (format {int(data['format_version'])})")
    size = int(data["img_size"])
    geometries = [
        Geometry(
            original_shape=tuple(int(v) for v in o),
            size=size,
            resized_shape=tuple(int(v) for v in r),
            offset=tuple(int(v) for v in off),
            flipped=bool(f),
        )
        for o, r, off, f in zip(
            data["geometry_original_shape"], data["geometry_resized_shape"],
            data["geometry_offset"], data["geometry_flipped"],
        )
    ]  # fmt: skip
    return Explanations(
        maps={str(n): data[f"maps/{n}"] for n in data["layers"]},
        logits=data["logits"],
        probs=data["probs"],
        targets=data["targets"],
        y_true=data["y_true"],
        image_paths=[str(p) for p in data["image_path"]],
        geometries=geometries,
        method=str(data["method"]),
        target_mode=str(data["target_mode"]),
        run_id=str(data["run_id"]),
        run_path=str(data["run_path"]),
        checkpoint_sha256=str(data["checkpoint_sha256"]),
        img_size=size,
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
    )
