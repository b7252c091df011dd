"""One batched sweep over a run's validation images: predictions and CAMs together.

Every command that needs a run's predictions or maps (``explain``,
``analyze``, ``report-pack``, ``explore``) gets them from :func:`run_maps`:
the stored record of an earlier sweep when its provenance matches
(:mod:`mammography.cam.store`), else :func:`sweep_run`, whose record is then
stored for the next command. In the sweep the run's images are made into
exactly the input its model was trained on (:meth:`mammography.runs.Run.dataset`,
i.e. the run's preprocessing record) by DataLoader worker processes (decoding
and geometry), normalised on the model's device, and the model runs once per
batch through the CAM engine: the same forward pass gives the logits, the
probabilities and the maps. The predictions a command shows are these
*recomputed* ones -- what the heatmaps explain -- with the run's stored
prediction beside them only where :meth:`mammography.runs.Run.check_predictions`
says the two differ.

The result, :class:`RunMaps`, keeps the low-resolution maps (raw, as the
engine computed them) with the provenance that decides whether it can be
reused: checkpoint SHA-256, preprocessing record, method, layers, target
mode, mixed precision. :func:`mammography.cam.record.write_record` stores it
as a record folder (the ``explain`` output), read back with
:func:`mammography.cam.record.load_record`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from mammography.cam.defaults import DEFAULT_BATCH_SIZE, DEFAULT_LAYERS
from mammography.cam.layers import LayerSpec, density_layer_names
from mammography.cam.methods import create_cam
from mammography.cam.runmaps import RunMaps
from mammography.data.labels import CLASS_LETTERS
from mammography.errors import ConfigError, MammographyError, RunError
from mammography.io.geometry import Geometry

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LAYERS",
    "RunMaps",
    "TARGET_MODES",
    "cam_batch",
    "canonical_method",
    "parse_target",
    "run_maps",
    "sweep_run",
    "target_mode_name",
]

log = logging.getLogger(__name__)

TARGET_MODES = ("predicted", "true", "all")


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


def canonical_method(method: str) -> str:
    """The CAM engine's name for ``method`` (aliases such as ``grad-cam`` resolved).

    Raises
    ------
    ConfigError
        An unknown method.
    """
    # the engine owns the names and aliases: ask it, on a one-layer probe model
    probe = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    return create_cam(method, probe, layers="0").name


# --------------------------------------------------------------------------- the data path


class _Prepared(torch.utils.data.Dataset):
    """What a loader worker does for one image: decode it and place it into the square.

    Items are ``(pixels, geometry, error)``: the unnormalised float32 square
    (or its 3 channels) exactly as :meth:`Preprocessing.to_tensor` would take
    it, its :class:`Geometry`, and ``None``; or ``(None, None, error)`` for an
    image the user's files make unreadable, so that the error reaches the
    command as the one-line message it is (not as a worker's traceback).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            prepared = self.dataset.prepared(i)
        except MammographyError as exc:
            return None, None, exc
        pixels = prepared.channels if prepared.channels is not None else prepared.square
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)), prepared.geometry, None


def _collate(items):
    """One batch: stacked pixels (grey (B, S, S) or colour (B, 3, S, S)), geometries, and the first error.

    Runs in the worker: an error is handed on, to be raised by the command itself.
    """
    error = next((e for _, _, e in items if e is not None), None)
    if error is not None:
        return None, None, error
    pixels = [p for p, _, _ in items]
    if len({p.ndim for p in pixels}) > 1:  # grey and colour squares in one batch: make all three-channel
        pixels = [p.unsqueeze(0).expand(3, -1, -1) if p.ndim == 2 else p for p in pixels]
    return torch.stack(pixels), [g for _, g, _ in items], None


def _worker_init(_worker_id: int) -> None:
    # decoding is numpy and pydicom; torch threads in every worker would only compete with the model
    torch.set_num_threads(1)


def image_batches(dataset, batch_size: int, device: torch.device, num_workers: int | str | None = None):
    """Yield ``(inputs, geometries)`` batches of ``dataset`` in order, normalised on ``device``.

    Decoding and geometry run in ``num_workers`` DataLoader worker processes
    (``None``/``"auto"``: :func:`mammography.machine.default_num_workers` for ``device``;
    0: in this process); the normalisation by the run's mean and std runs on
    ``device`` (:meth:`~mammography.data.preprocess.Preprocessing.normalise`),
    giving exactly the tensors of ``dataset[i]["image"]``.
    """
    from torch.utils.data import DataLoader

    from mammography.machine import resolve_num_workers

    workers = min(resolve_num_workers(num_workers, device), max(0, (len(dataset) - 1) // int(batch_size)))
    loader = DataLoader(_Prepared(dataset), batch_size=int(batch_size), shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda",
                        worker_init_fn=_worker_init if workers else None)
    for pixels, geometries, error in loader:
        if error is not None:
            raise error
        pixels = pixels.to(device, non_blocking=True)
        yield dataset.preprocessing.normalise(pixels), geometries


# --------------------------------------------------------------------------- the sweep


def cam_batch(cam, preprocessing, prepared: Sequence, y_true: np.ndarray, targets: str | int = "predicted") -> dict:
    """One batch of a sweep from images prepared elsewhere (the archive job's CPU tasks).

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
    return _explain(cam, images, y_true, targets)


def _explain(cam, images: torch.Tensor, y_true, targets) -> dict:
    """The CAM call of one batch: ``targets`` resolved against the labels ``y_true`` (1..4), numpy out."""
    labels0 = torch.as_tensor(np.asarray(y_true, dtype=np.int64) - 1)
    return cam(images, targets=_batch_targets(targets, labels0)).numpy()


def sweep_run(
    run,
    layers: LayerSpec = None,
    method: str = "gradcam",
    *,
    targets: str | int = "predicted",
    batch_size: int = 16,
    device: str | torch.device = "auto",
    autocast: str | None = None,
    cache_dir=None,
    num_workers: int | str | None = None,
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
    num_workers : decoding processes (``None`` / ``"auto"``: a number that
        suits the machine, see :func:`mammography.machine.default_num_workers`;
        0: decode in this process). The result does not depend on it.
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

    from mammography.machine import resolve_device
    from mammography.runs import as_run

    target_mode = target_mode_name(targets)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    run = as_run(run)
    if len(run.predictions) == 0:
        raise RunError(f"{run.path / 'val_predictions.csv'} has no rows: nothing to explain")
    dev = resolve_device(device)
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
    model_device = next(model.parameters()).device

    parts: list[dict[str, np.ndarray]] = []
    geometries: list[Geometry] = []
    with create_cam(method, model, layers, autocast=autocast) as cam:
        n_batches = -(-len(dataset) // int(batch_size))
        batches = image_batches(dataset, batch_size, model_device, num_workers)
        bar = tqdm(batches, total=n_batches, desc=f"Grad-CAM {run.run_id}", unit="batch", disable=not progress,
                   leave=False)
        for images, batch_geometries in bar:
            start = len(geometries)
            geometries.extend(batch_geometries)
            parts.append(_explain(cam, images, y_true[start : start + len(images)], targets))
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
        autocast=autocast,
    )


def run_maps(
    run,
    layers: LayerSpec = None,
    method: str = "gradcam",
    *,
    targets: str | int = "predicted",
    store=None,
    rows: Sequence[int] | None = None,
    model: torch.nn.Module | None = None,
    **sweep_options,
) -> RunMaps:
    """A run's predictions and maps: the stored record when it matches, else a new sweep (then stored).

    The one way a command gets them. A record in ``store`` serves when it
    was computed from the same checkpoint (SHA-256), preprocessing record,
    images and labels, method, target and precision, by this version of the
    tool, and holds at least the requested layers (see
    :class:`mammography.cam.store.SweepKey`). Otherwise the run is swept
    (:func:`sweep_run`) and, when every image was swept, the record is
    stored for the next command.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    layers, method, targets : as for :func:`sweep_run`.
    store : a :class:`~mammography.cam.store.RecordStore` (on disk) or a
        :class:`~mammography.cam.store.MemoryStore` (this process); ``None``:
        the store of ``cache_dir`` (:func:`~mammography.cam.store.open_store`),
        none without a cache folder (always sweep, store nothing).
    rows : positions in ``run.predictions`` (default: all); a stored record of
        every image serves any selection of them.
    model : the run's model when already loaded (used only if a sweep is needed).
    sweep_options : ``batch_size``, ``device``, ``autocast``, ``cache_dir``,
        ``num_workers``, ``progress`` of :func:`sweep_run`. They decide how,
        not what, is computed (``autocast`` excepted, which is part of the
        provenance), so a record made with other values serves.

    Returns
    -------
    RunMaps
        The requested layers only, in the order asked for; the images of
        ``rows``.
    """
    from mammography.cam.store import SweepKey, open_store
    from mammography.runs import as_run

    run = as_run(run)
    store = store if store is not None else open_store(sweep_options.get("cache_dir"))
    names = density_layer_names(layers)
    method = canonical_method(method)
    key = None
    if store is not None:
        key = SweepKey.of(run, method, target_mode_name(targets), sweep_options.get("autocast"))
        found = store.find(key, names)
        if found is not None:
            log.info("%s: %s maps at %s read from the stored sweep record", run.run_id, method, ", ".join(names))
            found = found.for_run(run)
            return found if rows is None else found.select(rows)
    maps = sweep_run(run, names, method, targets=targets, rows=rows, model=model, **sweep_options)
    if key is not None and (rows is None or list(rows) == list(range(len(run.predictions)))):
        store.put(maps, key)
    return maps
