"""The three stages of an archive job, as plain Python: Ray runs them, so can one process.

1. :func:`prepare_unit` (CPU task): every image of a chunk made into each
   group's model input by :meth:`Preprocessing.prepare
   <mammography.data.preprocess.Preprocessing.prepare>` (the one function that
   makes a run's input), and its image facts on the analysis grid: breast,
   markers and film edges (:func:`mammography.analysis.image_regions`), dense
   tissue (:func:`mammography.analysis.estimate_dense_tissue` without the
   pectoral muscle, or the manifest's ROI), the ROI. An image that cannot be
   read or measured gets an error text instead; the chunk goes on.
2. :class:`CamStage` (actor: one model copy per run, loaded once): the
   sweep's batches (:func:`mammography.cam.sweep.cam_batch`) over the
   readable images, and the marker occlusion of images with markers
   (:func:`mammography.analysis.faithfulness.occlusion_probabilities`).
3. :func:`finish_unit` (CPU task): per image and run the attention metrics
   (:func:`~mammography.analysis.spurious_shares`,
   :func:`~mammography.analysis.pattern_metrics`,
   :func:`~mammography.analysis.localisation_metrics`, flags by
   :func:`mammography.analysis.spurious.image_flags`), then the shard written:
   table part, record (:mod:`mammography.distributed.store`).

Timings of each stage are returned with the shard (the job manifest keeps
them; the README's throughput model is built from them).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.data.labels import CLASS_LETTERS
from mammography.distributed.plan import GroupWork, MetricSettings, ShardTask, Unit
from mammography.errors import ImageReadError, MammographyError, printable

__all__ = [
    "CamStage",
    "ExplainedUnit",
    "ImageFacts",
    "PreparedGroup",
    "PreparedUnit",
    "RunResult",
    "facts_table",
    "finish_unit",
    "image_facts",
    "metrics_table",
    "prepare_unit",
]

log = logging.getLogger(__name__)

_MASKS = ("breast", "markers", "film_edges", "dense", "roi")
_KINDS = ("outside_breast", "border", "marker", "film_edge")


def _worker() -> str:
    """``host:pid`` of this process (recorded per chunk and stage in the job manifest)."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _error_text(exc: BaseException) -> str:
    """One line saying why an image could not be explained."""
    if isinstance(exc, MammographyError):
        return printable(str(exc))
    return printable(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- image facts


@dataclass(frozen=True)
class ImageFacts:
    """What an image is, on its analysis grid, under one preprocessing (masks bit-packed).

    Attributes
    ----------
    grid : (h, w) of the analysis grid.
    bits : mask name (``breast``, ``markers``, ``film_edges``, ``dense``,
        ``roi``) -> ``numpy.packbits`` of the flattened mask (no ``roi`` when
        the image has none).
    n_markers, n_film_edges : markers and film-edge strips found.
    background : the image's background level (for painting markers over).
    markers_model : packed bool (S, S) marker mask in model space (for occlusion).
    size : S.
    """

    grid: tuple[int, int]
    bits: dict
    n_markers: int
    n_film_edges: int
    background: float
    markers_model: np.ndarray
    size: int

    def mask(self, name: str) -> np.ndarray | None:
        """Mask ``name`` on the grid (None for an absent ROI)."""
        packed = self.bits.get(name)
        if packed is None:
            return None
        h, w = self.grid
        return np.unpackbits(packed, count=h * w).astype(bool).reshape(h, w)

    def marker_square(self) -> np.ndarray:
        return np.unpackbits(self.markers_model, count=self.size * self.size).astype(bool).reshape(self.size, self.size)


def _roi_on_grid(path: str, original_shape, grid) -> np.ndarray:
    from mammography.analysis.maps import resize_mask
    from mammography.io.mask import read_mask_file

    mask = read_mask_file(path, "ROI mask")
    (h, w), (H, W) = mask.shape, original_shape
    if abs(h / w - H / W) > 0.02 * (H / W):
        raise ImageReadError(f"ROI mask {printable(path)} is {h}x{w} but its image is {H}x{W}; the mask must cover "
                             "the whole image")
    return resize_mask(mask, grid)


def image_facts(prepared, row: dict, settings: MetricSettings) -> ImageFacts:
    """The facts of one prepared image (see :class:`ImageFacts`).

    Parameters
    ----------
    prepared : :class:`~mammography.data.preprocess.PreparedImage`.
    row : the image's manifest row (``breast_mask_path``, ``artifact_bbox``,
        ``roi_path``, ``view``).
    settings : the metric settings (grid size, dense-tissue source).
    """
    from mammography.analysis import estimate_dense_tissue, grid_shape, image_regions, map_to_grid
    from mammography.io import pectoral_mask

    geometry = prepared.geometry
    grid = grid_shape(geometry.original_shape, settings.analysis_size)
    estimate = settings.dense_source == "estimate"
    masks = image_regions(prepared.square, geometry, grid, breast_mask_path=row.get("breast_mask_path"),
                          artifact_bbox=row.get("artifact_bbox"), with_image=estimate)
    roi = _roi_on_grid(row["roi_path"], geometry.original_shape, grid) if row.get("roi_path") else None
    if estimate:
        view = row.get("view") or prepared.view
        muscle = pectoral_mask(masks.image, masks.breast, view=view)
        dense = estimate_dense_tissue(masks.image, masks.breast, exclude=muscle)
    else:
        dense = roi if roi is not None else np.zeros(grid, dtype=bool)
    film = masks.film_edges if masks.film_edges is not None else np.zeros(grid, dtype=bool)
    bits = {"breast": masks.breast, "markers": masks.regions.markers(), "film_edges": film, "dense": dense, "roi": roi}
    return ImageFacts(
        grid=tuple(int(v) for v in grid),
        bits={k: np.packbits(np.asarray(v, dtype=bool).ravel()) for k, v in bits.items() if v is not None},
        n_markers=int(masks.regions.n_markers),
        n_film_edges=int(masks.regions.n_film_edges),
        background=float(masks.background),
        markers_model=np.packbits(masks.markers_model.ravel()),
        size=int(geometry.size),
    )


def facts_table(unit: Unit, group) -> pd.DataFrame:
    """The facts file of one group on one chunk: one row per image (bit-packed masks as bytes)."""
    rows = []
    for k, row in enumerate(unit.chunk.rows):
        facts, orientation = group.facts[k], group.orientation[k]
        out = {"archive_index": unit.chunk.start + k, "image_path": row["image_path"]}
        out.update({key: orientation.get(key) for key in ("laterality", "laterality_source", "view", "view_source")})
        out.update(grid_h=facts.grid[0] if facts else 0, grid_w=facts.grid[1] if facts else 0,
                   n_markers=facts.n_markers if facts else 0, n_film_edges=facts.n_film_edges if facts else 0,
                   background=facts.background if facts else math.nan)
        for name in _MASKS:
            packed = facts.bits.get(name) if facts else None
            out[f"{name}_bits"] = None if packed is None else packed.tobytes()
        out["error"] = group.errors[k]
        rows.append(out)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- stage 1: prepare


@dataclass(eq=False)
class PreparedGroup:
    """One group's model inputs and facts of a chunk.

    Attributes
    ----------
    work : the :class:`GroupWork`.
    stored : per image the square in its stored integer form
        (:meth:`Preprocessing.quantise`), None for an unreadable image (or
        once the CAM stage is done with it).
    geometries : per image (a zero geometry for an unreadable one).
    orientation : per image the laterality and view it was prepared with and their sources.
    facts : per image, None where it could not be measured.
    errors : per image, empty or why not.
    """

    work: GroupWork
    stored: list
    geometries: list
    orientation: list
    facts: list
    errors: list


@dataclass(eq=False)
class PreparedUnit:
    unit: Unit
    groups: list[PreparedGroup]
    seconds: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)


def _no_geometry(size: int):
    from mammography.io.geometry import Geometry

    return Geometry(original_shape=(0, 0), size=int(size), resized_shape=(0, 0), offset=(0, 0), flipped=False)


def _orientation(prepared, row: dict) -> dict:
    """Laterality and view as the image was prepared, else (the earlier project's rule resolves none)
    as the manifest says."""
    out = prepared.orientation()
    for key in ("laterality", "view"):
        if out.get(key) is None and row.get(key):
            out[key], out[f"{key}_source"] = row[key], "manifest"
    return out


def prepare_group(unit: Unit, work: GroupWork, timings: dict) -> PreparedGroup:
    """Stage 1 for one group: every image prepared (and measured) or given an error."""
    from mammography.data.preprocess import Preprocessing

    preprocessing = Preprocessing.from_record(work.preprocessing)
    group = PreparedGroup(work, [], [], [], [], [])
    for row in unit.chunk.rows:
        t0 = time.perf_counter()
        try:
            prepared = preprocessing.prepare(row["image_path"], row.get("laterality"))
        except Exception as exc:  # any unreadable image is a row with its error, never the end of the job
            group.stored.append(None)
            group.geometries.append(_no_geometry(preprocessing.img_size))
            group.orientation.append({})
            group.facts.append(None)
            group.errors.append(_error_text(exc))
            timings["prepare"] += time.perf_counter() - t0
            continue
        t1 = time.perf_counter()
        timings["prepare"] += t1 - t0
        pixels = prepared.channels if prepared.channels is not None else prepared.square
        group.stored.append(preprocessing.quantise(pixels))
        group.geometries.append(prepared.geometry)
        group.orientation.append(_orientation(prepared, row))
        try:
            group.facts.append(image_facts(prepared, row, unit.settings))
            group.errors.append("")
        except Exception as exc:  # a bad mask file, say: the image is reported, the chunk goes on
            group.stored[-1] = None
            group.facts.append(None)
            group.errors.append(_error_text(exc))
        timings["facts"] += time.perf_counter() - t1
    return group


def prepare_unit(unit: Unit) -> PreparedUnit:
    """Stage 1: decode and prepare every image of the chunk for each group, with its facts."""
    timings = {"prepare": 0.0, "facts": 0.0}
    groups = [prepare_group(unit, work, timings) for work in unit.groups]
    return PreparedUnit(unit, groups, timings, {"prepare": _worker()})


# ----------------------------------------------------------------------------- stage 2: CAM


@dataclass(eq=False)
class RunResult:
    """One run's maps of a chunk (zero maps and NaN probabilities where an image failed).

    Attributes
    ----------
    task : the shard.
    arrays : ``maps/<layer>``, ``logits``, ``probs``, ``targets`` over the whole chunk.
    layer_names, method : as the engine named them.
    occlusion : ``marker_occlusion_prob``, ``marker_occlusion_drop``,
        ``marker_occlusion_flip`` per image, or None when not computed.
    errors : per image (the group's, plus the run's own, e.g. no label for ``--target true``).
    """

    task: ShardTask
    arrays: dict
    layer_names: tuple
    method: str
    occlusion: dict | None
    errors: list


@dataclass(eq=False)
class ExplainedUnit:
    unit: Unit
    groups: list[PreparedGroup]
    results: list[list[RunResult]]
    seconds: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)


def _fill(parts: list[dict], ok: list[int], n: int) -> dict:
    """Stack the batches' arrays into whole-chunk arrays (zeros / NaN / -1 where no image was explained)."""
    out = {}
    for key in parts[0] if parts else ():
        done = np.concatenate([p[key] for p in parts])
        if key.startswith("maps/"):
            full = np.zeros((n, *done.shape[1:]), dtype=np.float32)
        elif key == "targets":
            full = np.full((n, *done.shape[1:]), -1, dtype=np.int64)
        else:
            full = np.full((n, *done.shape[1:]), np.nan, dtype=np.float32)
        full[ok] = done
        out[key] = full
    return out


class CamStage:
    """Stage 2: one model per run, loaded once; maps and predictions of prepared chunks.

    Parameters
    ----------
    weights : run folder -> the model's ``state_dict`` (from the checkpoint
        the driver read and hashed).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    autocast : None, ``"bf16"`` or ``"fp16"`` (CUDA).
    threads : intra-op threads of the CPU model (None: as set).
    """

    def __init__(self, weights: dict, device: str = "auto", autocast: str | None = None, threads: int | None = None):
        import torch

        from mammography.models import build_density_model
        from mammography.training.train import resolve_device

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.autocast = autocast
        self.models = {}
        for folder, state in weights.items():
            model = build_density_model(num_classes=len(CLASS_LETTERS))
            model.load_state_dict(state)
            self.models[folder] = model.to(self.device).eval().to(memory_format=torch.channels_last)

    def __call__(self, prepared: PreparedUnit) -> ExplainedUnit:
        unit = prepared.unit
        timings = {"cam": 0.0, "occlusion": 0.0}
        results = []
        for group in prepared.groups:
            results.append([self._run(unit, group, task, timings) for task in group.work.shards])
            group.stored = [None] * len(group.stored)  # the squares are not needed past this stage
        return ExplainedUnit(unit, prepared.groups, results, {**prepared.seconds, **timings},
                             {**prepared.workers, "cam": _worker()})

    def _run(self, unit: Unit, group: PreparedGroup, task: ShardTask, timings: dict) -> RunResult:
        from mammography.cam.methods import create_cam
        from mammography.cam.sweep import cam_batch
        from mammography.data.preprocess import Preprocessing

        run, n = task.run, len(unit.chunk)
        preprocessing = Preprocessing.from_record(group.work.preprocessing)
        y_true = np.array([r["y_true"] for r in unit.chunk.rows], dtype=np.int64)
        errors = list(group.errors)
        if run.targets == "true":
            errors = [e or ("" if y_true[i] > 0 else "no true label, so --target true cannot explain it")
                      for i, e in enumerate(errors)]
        ok = [i for i in range(n) if not errors[i]]
        model = self.models[run.folder]
        t0 = time.perf_counter()
        parts = []
        with create_cam(run.method, model, list(run.layers), autocast=self.autocast) as cam:
            for start in range(0, len(ok), unit.batch_size):
                idx = ok[start : start + unit.batch_size]
                images = [preprocessing.dequantise(group.stored[i], group.geometries[i]) for i in idx]
                parts.append(cam_batch(cam, preprocessing, images, y_true[idx], run.targets))
            names, method = cam.layer_names, cam.name
        if not parts:  # nothing readable in the chunk: shapes from one blank image
            blank = preprocessing.dequantise(preprocessing.quantise(np.zeros((preprocessing.img_size,) * 2)),
                                             _no_geometry(preprocessing.img_size))
            with create_cam(run.method, model, list(run.layers), autocast=self.autocast) as cam:
                shapes = {k: v[:0] for k, v in cam_batch(cam, preprocessing, [blank], np.ones(1, np.int64),
                                                         "predicted" if run.targets == "true" else run.targets).items()}
            parts = [shapes]
        arrays = _fill(parts, ok, n)
        timings["cam"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        occlusion = self._occlusion(unit, group, preprocessing, model, arrays["probs"], ok) \
            if unit.settings.marker_occlusion else None
        timings["occlusion"] += time.perf_counter() - t1
        return RunResult(task, arrays, tuple(names), method, occlusion, errors)

    def _occlusion(self, unit: Unit, group: PreparedGroup, preprocessing, model, probs, ok: list[int]) -> dict:
        """Probability of the predicted class with the image's markers painted with its background."""
        import torch

        from mammography.analysis.faithfulness import occlusion_probabilities

        n = len(unit.chunk)
        prob, drop, flip = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
        jobs = [i for i in ok if group.facts[i] is not None and group.facts[i].n_markers > 0]
        jobs = [i for i in jobs if group.facts[i].marker_square().any()]
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        for start in range(0, len(jobs), unit.batch_size):
            idx = jobs[start : start + unit.batch_size]
            images = torch.stack([preprocessing.to_tensor(preprocessing.dequantise(group.stored[i], group.geometries[i]))
                                  for i in idx])
            masks = np.stack([group.facts[i].marker_square() for i in idx])
            fill = torch.stack([(torch.full((3,), float(group.facts[i].background)) - mean) / std for i in idx])
            after = occlusion_probabilities(model, images, masks, fill, batch_size=unit.batch_size)
            rows = np.asarray(idx)
            cls = np.nanargmax(probs[rows], axis=1)
            p_after = after[np.arange(len(rows)), cls]
            prob[rows], drop[rows] = p_after, probs[rows, cls] - p_after
            flip[rows] = after.argmax(axis=1) != cls
        return {"marker_occlusion_prob": prob, "marker_occlusion_drop": drop, "marker_occlusion_flip": flip}


# ----------------------------------------------------------------------------- stage 3: metrics and write


def _metric_map(result: RunResult, i: int, y_pred: int) -> np.ndarray:
    """Image ``i``'s map of the deepest layer asked for (of the predicted class for ``--target all``)."""
    maps = result.arrays[f"maps/{result.layer_names[-1]}"]
    return maps[i, y_pred - 1] if maps.ndim == 4 else maps[i]


def metrics_table(unit: Unit, group: PreparedGroup, result: RunResult) -> pd.DataFrame:
    """The job table rows of one run on one chunk (columns: :mod:`mammography.distributed`)."""
    from mammography.analysis import localisation_metrics, map_to_grid, pattern_metrics, spurious_shares
    from mammography.analysis.localisation import LOCALISATION_METRICS
    from mammography.analysis.spurious import image_flags

    run, settings = result.task.run, unit.settings
    probs, logits = result.arrays["probs"], result.arrays["logits"]
    targets = result.arrays["targets"]
    records = []
    for i, row in enumerate(unit.chunk.rows):
        error = result.errors[i]
        y_pred = 0 if error else int(np.argmax(probs[i])) + 1
        rec = {
            "run_id": run.run_id, "run_label": run.label, "seed": run.seed, "shard_id": result.task.shard_id,
            "archive_index": unit.chunk.start + i, "image_path": row["image_path"],
            "accession": row.get("accession"), "patient_id": row.get("patient_id"),
            "y_true": int(row["y_true"]), "y_pred": y_pred,
            "confidence": float(probs[i, y_pred - 1]) if y_pred else math.nan,
        }
        for k, letter in enumerate(CLASS_LETTERS):
            rec[f"p_{letter}"] = float(probs[i, k])
        for k, letter in enumerate(CLASS_LETTERS):
            rec[f"logit_{letter}"] = float(logits[i, k])
        rec["target"] = int(targets[i]) + 1 if targets.ndim == 1 and not error else 0
        rec.update({key: group.orientation[i].get(key) for key in
                    ("laterality", "laterality_source", "view", "view_source")})
        facts = group.facts[i]
        values = {f"{kind}_{part}": math.nan for kind in _KINDS for part in ("share", "area")}
        values.update(n_markers=facts.n_markers if facts else 0, n_film_edges=facts.n_film_edges if facts else 0,
                      dense_mass_share=math.nan, dense_area_share=math.nan, dense_margin=math.nan,
                      attended_breast_share=math.nan, roi_area_share=math.nan,
                      **{m: math.nan for m in LOCALISATION_METRICS})
        if not error:
            heat = map_to_grid(_metric_map(result, i, y_pred), group.geometries[i], facts.grid)
            breast = facts.mask("breast")
            shares = spurious_shares(heat, breast, facts.mask("markers"), settings.border_fraction, facts.n_markers,
                                     film_edges=facts.mask("film_edges"), n_film_edges=facts.n_film_edges)
            for kind in _KINDS:
                values[f"{kind}_share"] = getattr(shares, kind)
                values[f"{kind}_area"] = getattr(shares, f"{kind}_area")
            values.update(pattern_metrics(heat, breast, facts.mask("dense"), settings.attention_threshold).to_dict())
            roi = facts.mask("roi")
            if roi is not None:
                values.update(localisation_metrics(heat, roi, settings.attention_threshold).to_dict())
        rec.update(values)
        if result.occlusion is not None:
            for key, column in result.occlusion.items():
                rec[key] = column[i].item()
        rec["error"] = error
        records.append(rec)
    table = pd.DataFrame(records)
    flags = image_flags(table, settings.spurious)
    error = table.pop("error")
    table = pd.concat([table, flags], axis=1)
    table["error"] = error
    return table


def _shard_maps(unit: Unit, group: PreparedGroup, result: RunResult):
    """The shard as a :class:`~mammography.cam.sweep.RunMaps` (the record's in-memory form)."""
    from mammography.cam.sweep import RunMaps

    run, a = result.task.run, result.arrays
    return RunMaps(
        maps={name: a[f"maps/{name}"] for name in result.layer_names},
        logits=a["logits"], probs=a["probs"], targets=a["targets"],
        y_true=np.array([r["y_true"] for r in unit.chunk.rows], dtype=np.int64),
        image_paths=unit.chunk.image_paths, geometries=list(group.geometries),
        method=result.method, target_mode=run.target_mode, run_id=run.run_id, run_path=run.run_path,
        checkpoint_sha256=run.checkpoint_sha256, preprocessing=run.preprocessing, errors=list(result.errors),
    )


def finish_unit(explained: ExplainedUnit) -> list[dict]:
    """Stage 3: the metrics of every run, then the chunk's facts and shards written.

    Returns
    -------
    list of dict, one per shard written: ``run`` (folder), ``shard_id``,
    ``chunk``, ``n_images``, ``n_errors``, ``seconds`` (per stage, for the
    whole chunk; ``prepare``/``facts``/``cam``/``occlusion`` are shared by the
    chunk's shards); first one entry for the chunk (``run`` None) with its
    ``seconds`` per stage and ``workers`` (``host:pid`` per stage).
    """
    from mammography.distributed.store import JobStore

    unit = explained.unit
    store = JobStore(Path(unit.out_dir))
    timings = dict(explained.seconds, metrics=0.0, write=0.0)
    written = []
    for group, results in zip(explained.groups, explained.results):
        if group.work.write_facts:
            t0 = time.perf_counter()
            store.write_facts(group.work.group_id, group.work.facts_id, facts_table(unit, group))
            timings["write"] += time.perf_counter() - t0
        for result in results:
            t0 = time.perf_counter()
            table = metrics_table(unit, group, result)
            t1 = time.perf_counter()
            store.write_shard(result.task.run, result.task.shard_id, _shard_maps(unit, group, result), table)
            timings["metrics"] += t1 - t0
            timings["write"] += time.perf_counter() - t1
            written.append({"run": result.task.run.folder, "shard_id": result.task.shard_id,
                            "chunk": unit.chunk.index, "n_images": len(unit.chunk),
                            "n_errors": int(sum(bool(e) for e in result.errors))})
    summary = {"run": None, "chunk": unit.chunk.index, "n_images": len(unit.chunk),
               "seconds": {k: round(v, 4) for k, v in timings.items()},
               "workers": {**explained.workers, "finish": _worker()},
               "runs_computed": sum(len(r) for r in explained.results)}
    return [summary] + written


def run_unit_locally(unit: Unit, stage: CamStage) -> list[dict]:
    """All three stages of one unit in this process (the engine without Ray)."""
    return finish_unit(stage(prepare_unit(unit)))
