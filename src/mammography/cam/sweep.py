"""One batched sweep over a run's validation images: predictions and CAMs together.

Every command that needs a run's predictions or maps (``explain``,
``analyze``, ``report-pack``, ``explore``) gets them from :func:`sweep_run`:
the run's images are made into exactly the input its model was trained on
(:meth:`mammography.runs.Run.dataset`, i.e. the run's preprocessing record),
the model runs once per batch through the CAM engine, and the same forward
pass gives the logits, the probabilities and the maps. The predictions a
command shows are these *recomputed* ones -- what the heatmaps explain --
with the run's stored prediction beside them only where
:meth:`mammography.runs.Run.check_predictions` says the two differ.

The result, :class:`RunMaps`, keeps the low-resolution maps (raw, as the
engine computed them) with the provenance that decides whether it can be
reused: checkpoint SHA-256, preprocessing record, method, layers, target
mode. :meth:`RunMaps.save` / :func:`load_run_maps` write and read it as one
compressed ``.npz`` (the ``explain`` archive).

Archive keys
------------
``maps/<layer>`` float32 (N, h, w), or (N, 4, h, w) for ``targets="all"``;
``logits``, ``probs`` float32 (N, 4); ``targets`` int64 (N,) or (N, 4),
0-based; ``y_true`` int64 (N,) 1..4; ``image_path`` str (N,); ``layers`` str
(L,); ``geometry_original_shape``, ``geometry_resized_shape``,
``geometry_offset`` int64 (N, 2); ``geometry_flipped`` bool (N,); scalars
``method``, ``target_mode``, ``run_id``, ``run_path``, ``checkpoint_sha256``,
``img_size``, ``preprocessing`` (JSON of the record), ``format_version``;
``mean``, ``std`` float64 (3,).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mammography.cam.layers import LayerSpec
from mammography.cam.methods import create_cam
from mammography.cam.result import CAMResult, normalise_maps
from mammography.data.labels import CLASS_LETTERS
from mammography.errors import ConfigError, RunError
from mammography.io.geometry import Geometry

__all__ = [
    "FORMAT_VERSION",
    "RunMaps",
    "TARGET_MODES",
    "cam_batch",
    "load_run_maps",
    "parse_target",
    "sweep_run",
    "target_mode_name",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
TARGET_MODES = ("predicted", "true", "all")


@dataclass(eq=False)
class RunMaps:
    """Recomputed predictions and low-resolution CAMs of a run's validation images.

    Attributes
    ----------
    maps : layer -> float32 (N, h, w) raw maps (or (N, 4, h, w) for every class).
    logits, probs : float32 (N, 4), from the same forward pass.
    targets : int64 (N,) or (N, 4), 0-based classes explained.
    y_true : int64 (N,) BI-RADS labels 1..4.
    image_paths : N absolute paths, in ``val_predictions.csv`` order.
    geometries : one :class:`~mammography.io.geometry.Geometry` per image.
    method, target_mode : what was computed.
    run_id, run_path, checkpoint_sha256 : which checkpoint.
    preprocessing : the run's preprocessing record (``Preprocessing.to_record()``).
    errors : per image, empty or why it could not be explained (its
        probabilities are then NaN and its maps zero); empty list = none
        (a sweep stops at an unreadable image; a cluster job records it).
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
    preprocessing: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    # -- views ------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.maps)

    @property
    def img_size(self) -> int:
        return int(self.preprocessing["img_size"])

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocessing["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocessing["std"])

    @property
    def y_pred(self) -> np.ndarray:
        """(N,) recomputed predicted classes, 1..4."""
        return self.probs.argmax(axis=1).astype(np.int64) + 1

    @property
    def confidence(self) -> np.ndarray:
        """(N,) probability of the recomputed predicted class."""
        return self.probs.max(axis=1)

    def __len__(self) -> int:
        return len(self.image_paths)

    def metrics(self) -> dict:
        """``acc, kappa_quadratic, macro_f1, auc_ovr, bal_acc, bal_acc_adj`` of the
        recomputed predictions (float or None), as training computes them."""
        from mammography.training.metrics import SCALAR_METRICS, compute_metrics

        if not len(self):
            return {k: None for k in SCALAR_METRICS}
        full = compute_metrics(self.y_true, self.y_pred, self.probs.astype(np.float64))
        return {k: full[k] for k in SCALAR_METRICS}

    def provenance(self) -> dict:
        """What decides whether this record can stand for a new sweep."""
        return {
            "run_id": self.run_id,
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": self.preprocessing,
            "method": self.method,
            "layers": list(self.layers),
            "target_mode": self.target_mode,
        }

    def normalised(self, layer: str | None = None) -> np.ndarray:
        """float32 maps of ``layer`` (default: the deepest) min-max normalised per image."""
        layer = layer or self.layers[-1]
        return normalise_maps(torch.from_numpy(np.ascontiguousarray(self.maps[layer]))).numpy()

    def result(self, indices: Sequence[int] | slice | None = None) -> CAMResult:
        """The maps (all, or the selected images) as a :class:`CAMResult` on the
        CPU, for its normalise / upsample / to_original / fuse helpers."""
        sel = slice(None) if indices is None else indices
        return CAMResult(
            maps={n: torch.from_numpy(np.ascontiguousarray(m[sel])) for n, m in self.maps.items()},
            logits=torch.from_numpy(np.ascontiguousarray(self.logits[sel])),
            probs=torch.from_numpy(np.ascontiguousarray(self.probs[sel])),
            targets=torch.from_numpy(np.ascontiguousarray(self.targets[sel])),
            method=self.method,
            input_size=(self.img_size, self.img_size),
        )

    # -- storage ------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named numpy arrays (the archive's keys, module docstring)."""
        g = self.geometries
        return {
            **{f"maps/{name}": m for name, m in self.maps.items()},
            "logits": self.logits,
            "probs": self.probs,
            "targets": self.targets,
            "y_true": self.y_true,
            "image_path": np.asarray(self.image_paths, dtype=np.str_),
            "layers": np.asarray(self.layers, dtype=np.str_),
            "geometry_original_shape": np.asarray([x.original_shape for x in g], dtype=np.int64).reshape(-1, 2),
            "geometry_resized_shape": np.asarray([x.resized_shape for x in g], dtype=np.int64).reshape(-1, 2),
            "geometry_offset": np.asarray([x.offset for x in g], dtype=np.int64).reshape(-1, 2),
            "geometry_flipped": np.asarray([x.flipped for x in g], dtype=bool),
            "method": np.asarray(self.method),
            "target_mode": np.asarray(self.target_mode),
            "run_id": np.asarray(self.run_id),
            "run_path": np.asarray(self.run_path),
            "checkpoint_sha256": np.asarray(self.checkpoint_sha256),
            "img_size": np.asarray(self.img_size, dtype=np.int64),
            "mean": np.asarray(self.mean, dtype=np.float64),
            "std": np.asarray(self.std, dtype=np.float64),
            "preprocessing": np.asarray(json.dumps(self.preprocessing, sort_keys=True)),
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        }

    def save(self, path: str | Path) -> Path:
        """Write the compressed archive atomically (temp file, then rename)."""
        from mammography.atomic import write_atomic

        return write_atomic(Path(path), lambda fh: np.savez_compressed(fh, **self.arrays()))


def load_run_maps(path: str | Path) -> RunMaps:
    """Read an archive written by :meth:`RunMaps.save` (``mammography explain``).

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
        Geometry(original_shape=tuple(int(v) for v in o), size=size, resized_shape=tuple(int(v) for v in r),
                 offset=tuple(int(v) for v in off), flipped=bool(f))
        for o, r, off, f in zip(data["geometry_original_shape"], data["geometry_resized_shape"],
                                data["geometry_offset"], data["geometry_flipped"])
    ]
    if "preprocessing" in data:
        preprocessing = json.loads(str(data["preprocessing"]))
    else:  # format 1 archives came from this project's runs only
        preprocessing = {"pipeline": "fit-pad", "img_size": size, "mean": data["mean"].tolist(),
                         "std": data["std"].tolist()}
    return RunMaps(
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
        preprocessing=preprocessing,
    )


# --------------------------------------------------------------------------- targets


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


def target_mode_name(targets) -> str:
    """The recorded name of a target spec: ``predicted``, ``true``, ``all`` or ``class A``..``class D``."""
    if isinstance(targets, str):
        if targets not in TARGET_MODES:
            raise ConfigError(f"unknown target {targets!r}; use predicted, true, all or a class index 0..3")
        return targets
    if isinstance(targets, (int, np.integer)) and 0 <= int(targets) < len(CLASS_LETTERS):
        return f"class {CLASS_LETTERS[int(targets)]}"
    raise ConfigError(f"target class must be 0..{len(CLASS_LETTERS) - 1} (0 = BI-RADS A), got {targets!r}")


def _batch_targets(targets, labels0: torch.Tensor):
    """What to pass to the CAM for one batch (labels0: 0-based true classes)."""
    if targets == "true":
        if bool((labels0 < 0).any()):
            raise RunError("some validation images have no true label, so --target true is impossible")
        return labels0
    return targets


# --------------------------------------------------------------------------- the sweep


def cam_batch(cam, preprocessing, prepared: Sequence, y_true: np.ndarray, targets: str | int = "predicted") -> dict:
    """One batch of the sweep: maps, logits, probabilities and targets of prepared images.

    Parameters
    ----------
    cam : a CAM from :func:`mammography.cam.methods.create_cam` (inside its ``with``).
    preprocessing : the run's :class:`~mammography.data.preprocess.Preprocessing`
        (normalises the squares into the model input).
    prepared : :class:`~mammography.data.preprocess.PreparedImage` per image.
    y_true : (B,) BI-RADS labels 1..4 (used by ``targets="true"``).
    targets : as for :func:`sweep_run`.

    Returns
    -------
    dict of numpy arrays: ``maps/<layer>``, ``logits``, ``probs``, ``targets``
    (:meth:`mammography.cam.result.CAMResult.numpy`).
    """
    images = torch.stack([preprocessing.to_tensor(p) for p in prepared])
    labels0 = torch.as_tensor(np.asarray(y_true, dtype=np.int64) - 1)
    return cam(images, targets=_batch_targets(targets, labels0)).numpy()



def sweep_run(
    run,
    layers: LayerSpec = None,
    method: str = "gradcam",
    *,
    targets: str | int = "predicted",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    autocast: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    rows: Sequence[int] | None = None,
) -> RunMaps:
    """Recompute predictions and CAMs for every validation image of a run, in batches.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    layers : target layers (``None`` = ``"features.8"``, a name, a list, or
        ``"stages"``); see :func:`mammography.cam.layers.resolve_layers`.
    method : ``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam`` or ``layercam``.
    targets : ``"predicted"`` (default, the recomputed prediction), ``"true"``
        (the label), ``"all"`` (every class; maps (N, 4, h, w)) or a 0-based
        class index.
    batch_size : images per CAM call.
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    autocast : ``None``, ``"bf16"`` or ``"fp16"`` (CUDA).
    cache_dir : decoded-image cache folder; ``None`` decodes every image.
    progress : show a tqdm progress bar.
    model : the run's model, already loaded (its checkpoint is not read again).
    rows : positions in ``run.predictions`` to sweep, in this order (default: all).

    Returns
    -------
    RunMaps

    Raises
    ------
    RunError, CheckpointError, ImageReadError, ConfigError
        Unreadable run, checkpoint or image; bad option.
    """
    from tqdm.auto import tqdm

    from mammography.runs import Run, load_run
    from mammography.training.train import resolve_device

    target_mode = target_mode_name(targets)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    run = run if isinstance(run, Run) else load_run(run)
    if len(run.predictions) == 0:
        raise RunError(f"{run.path / 'val_predictions.csv'} has no rows: nothing to explain")
    dev = resolve_device(str(device))
    if model is None:
        model = run.load_model(device=dev)
    run.require_images()
    # channels-last weights match the engine's channels-last input (faster convolutions)
    model = model.to(memory_format=torch.channels_last)
    rows = list(range(len(run.predictions))) if rows is None else [int(r) for r in rows]
    if not rows:
        raise ConfigError(f"{run.run_id}: no validation image selected")
    dataset = run.dataset(cache_dir=cache_dir, rows=rows)
    y_true = run.predictions["y_true"].to_numpy(dtype=np.int64)[rows]

    parts: list[dict[str, np.ndarray]] = []
    geometries: list[Geometry] = []
    with create_cam(method, model, layers, autocast=autocast) as cam:
        starts = range(0, len(dataset), int(batch_size))
        bar = tqdm(starts, desc=f"Grad-CAM {run.run_id}", unit="batch", disable=not progress, leave=False)
        for start in bar:
            idx = range(start, min(start + int(batch_size), len(dataset)))
            prepared = [dataset.prepared(i) for i in idx]  # decoded once: square and geometry
            geometries.extend(p.geometry for p in prepared)
            parts.append(cam_batch(cam, dataset.preprocessing, prepared, y_true[start : start + len(idx)], targets))
        layer_names = cam.layer_names
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return RunMaps(
        maps={name: arrays[f"maps/{name}"] for name in layer_names},
        logits=arrays["logits"],
        probs=arrays["probs"],
        targets=arrays["targets"],
        y_true=y_true,
        image_paths=[str(p) for p in dataset.paths],
        geometries=geometries,
        method=cam.name,
        target_mode=target_mode,
        run_id=run.run_id,
        run_path=str(run.path),
        checkpoint_sha256=run.checkpoint_sha256,
        preprocessing=run.preprocessing.to_record(),
    )
