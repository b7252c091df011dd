"""The three stages of an archive job, as plain Python: Ray runs them, so can one process.

1. :func:`prepare_unit` (CPU task): every image of a chunk read once, with
   :func:`mammography.io.read_mammogram`, and its image facts found on it by
   the analysis's own code (:func:`mammography.analysis.facts.facts_from_mammogram`:
   breast, markers, film edges, pectoral muscle, dense-tissue estimate, the
   manifest's ROI, on the analysis grid -- what ``mammography analyze``
   measures against). Then each group's model input: :meth:`Preprocessing.prepare
   <mammography.data.preprocess.Preprocessing.prepare>` (the one function that
   makes a run's input), from the same decoded image where the group reads
   files as the facts do (this project's fit-pad runs), and the facts as that
   model saw them (:meth:`~mammography.analysis.facts.ImageFacts.in_model`:
   where the marker occlusion paints, with which background). An image that
   cannot be read or measured gets an error text instead; the chunk goes on.
2. :class:`CamStage` (actor: one model copy per run, loaded once): the
   sweep's batches (:func:`mammography.cam.sweep.cam_batch`) over the
   readable images, and the marker occlusion of images whose markers the
   model saw (:func:`mammography.analysis.faithfulness.marker_occlusion`, as ``analyze``).
3. :func:`finish_unit` (CPU task): per run the attention metrics of all the
   chunk's images at once (:func:`mammography.analysis.measure.measure_images`,
   flags by :func:`mammography.analysis.spurious.image_flags`: analyze's own
   functions, so the job's numbers are analyze's), then the shard written:
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
from mammography.errors import MammographyError, printable

__all__ = [
    "CamStage",
    "ExplainedUnit",
    "MarkerPaint",
    "PreparedGroup",
    "PreparedUnit",
    "ReadImage",
    "RunResult",
    "dense_mask",
    "facts_table",
    "finish_unit",
    "measure_run",
    "metrics_table",
    "prepare_image",
    "prepare_unit",
    "read_image",
]

log = logging.getLogger(__name__)

#: the dense-tissue metrics, NaN where ``--dense-source roi`` finds no ROI
_DENSE_METRICS = ("dense_mass_share", "dense_area_share", "dense_margin")


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


@dataclass(eq=False)
class ReadImage:
    """One image of a chunk, read once for the facts and the groups that read files the same way.

    Attributes
    ----------
    mammogram : as :func:`~mammography.io.read_mammogram` returned it (None when unreadable).
    facts : its :class:`~mammography.analysis.facts.ImageFacts` (None when they could not be found).
    error : empty, or why the image cannot be explained.
    """

    mammogram: object | None
    facts: object | None
    error: str = ""


def read_image(row: dict, settings: MetricSettings, timings: dict) -> ReadImage:
    """Read the image of a manifest ``row`` and find its facts (the mask files and box its row names).

    ``timings["decode"]`` and ``timings["facts"]`` grow by the seconds each took.
    """
    from mammography.analysis.facts import FACTS_WINDOW, FactSources, facts_from_mammogram
    from mammography.io import read_mammogram

    t0 = time.perf_counter()
    try:
        mammogram = read_mammogram(row["image_path"], percentile_window=FACTS_WINDOW)
    except Exception as exc:  # any unreadable image is a row with its error, never the end of the job
        timings["decode"] += time.perf_counter() - t0
        return ReadImage(None, None, _error_text(exc))
    t1 = time.perf_counter()
    timings["decode"] += t1 - t0
    try:
        sources = FactSources.from_cells(row.get("breast_mask_path"), row.get("artifact_bbox"), row.get("roi_path"))
        facts = facts_from_mammogram(mammogram, settings.analysis_size, sources)
    except Exception as exc:  # a bad mask file or box, say: the image is reported, the chunk goes on
        return ReadImage(mammogram, None, _error_text(exc))
    finally:
        timings["facts"] += time.perf_counter() - t1
    return ReadImage(mammogram, facts)


def dense_mask(facts, settings: MetricSettings) -> np.ndarray:
    """The dense-tissue mask the pattern metrics use, as ``analyze`` chooses it for ``settings.dense_source``
    (an empty one for ``roi`` without an ROI; :func:`metrics_table` gives those images NaN dense metrics)."""
    if settings.dense_source == "estimate":
        return facts.dense_estimate
    return facts.roi if facts.roi is not None else np.zeros(facts.shape, dtype=bool)


def _bits(mask: np.ndarray | None) -> bytes | None:
    return None if mask is None else np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()


def facts_table(unit: Unit, group: "PreparedGroup", facts: list) -> pd.DataFrame:
    """The facts file of one group on one chunk: one row per image (bit-packed masks on the analysis
    grid as bytes; ``background`` in the group's model intensities)."""
    rows = []
    for k, row in enumerate(unit.chunk.rows):
        f, orientation = facts[k], group.orientation[k]
        out = {"archive_index": unit.chunk.start + k, "image_path": row["image_path"]}
        out.update({key: orientation.get(key) for key in ("laterality", "laterality_source", "view", "view_source")})
        out.update(grid_h=f.shape[0] if f else 0, grid_w=f.shape[1] if f else 0,
                   n_markers=f.n_markers if f else 0, n_film_edges=f.n_film_edges if f else 0,
                   background=group.backgrounds[k])
        masks = {"breast": f.breast, "markers": f.markers, "film_edges": f.film_edges,
                 "dense": dense_mask(f, unit.settings), "roi": f.roi} if f else {}
        for name in ("breast", "markers", "film_edges", "dense", "roi"):
            out[f"{name}_bits"] = _bits(masks.get(name))
        out["error"] = group.errors[k]
        rows.append(out)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- stage 1: prepare


@dataclass(frozen=True)
class MarkerPaint:
    """Where one run's model saw an image's markers, and what the marker occlusion paints them with.

    Attributes
    ----------
    bits : ``numpy.packbits`` of the (size, size) occlusion mask
        (:meth:`~mammography.analysis.facts.ModelMasks.occlusion`).
    size : side of the model square.
    background : the image's background level in the model's own intensities
        (:meth:`~mammography.analysis.facts.ModelMasks.background`).
    """

    bits: np.ndarray
    size: int
    background: float

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.bits, count=self.size * self.size).astype(bool).reshape(self.size, self.size)


@dataclass(eq=False)
class PreparedGroup:
    """One group's model inputs of a chunk.

    Attributes
    ----------
    work : the :class:`GroupWork`.
    stored : per image the square in its stored integer form
        (:meth:`Preprocessing.quantise`), None for an image that cannot be
        explained (or once the CAM stage is done with it).
    geometries : per image (a zero geometry for an unreadable one).
    orientation : per image the laterality and view it was prepared with and their sources.
    backgrounds : per image its background level in the model square (NaN when not prepared).
    paint : per image a :class:`MarkerPaint` where the marker occlusion applies (the model saw markers), else None.
    errors : per image, empty or why not.
    """

    work: GroupWork
    stored: list = field(default_factory=list)
    geometries: list = field(default_factory=list)
    orientation: list = field(default_factory=list)
    backgrounds: list = field(default_factory=list)
    paint: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def add_error(self, size: int, error: str) -> None:
        self.add(None, _no_geometry(size), {}, math.nan, None, error)

    def add(self, stored, geometry, orientation: dict, background: float, paint, error: str = "") -> None:
        self.stored.append(stored)
        self.geometries.append(geometry)
        self.orientation.append(orientation)
        self.backgrounds.append(background)
        self.paint.append(paint)
        self.errors.append(error)


@dataclass(eq=False)
class PreparedUnit:
    """Stage 1's output: the groups' inputs and, per image, its facts (``ImageFacts.to_arrays()``, bit-packed
    for the trip through Ray's object store; None where the image cannot be explained)."""

    unit: Unit
    groups: list[PreparedGroup]
    facts: list
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


def _prepare(preprocessing, row: dict, image: ReadImage):
    """The group's model input of the image, decoded again only where the group reads files otherwise."""
    from mammography.analysis.facts import FACTS_WINDOW

    if preprocessing.percentile_window == FACTS_WINDOW:
        return preprocessing.prepare_mammogram(image.mammogram, row.get("laterality"))
    return preprocessing.prepare(row["image_path"], row.get("laterality"))


def prepare_image(group: PreparedGroup, preprocessing, row: dict, image: ReadImage, settings: MetricSettings,
                  timings: dict) -> None:
    """Stage 1 for one image and group: its model input and the facts as that model saw them, or its error."""
    if image.error:
        group.add_error(preprocessing.img_size, image.error)
        return
    t0 = time.perf_counter()
    try:
        prepared = _prepare(preprocessing, row, image)
    except Exception as exc:  # the run's own reader may refuse a file the facts could read
        group.add_error(preprocessing.img_size, _error_text(exc))
        timings["prepare"] += time.perf_counter() - t0
        return
    pixels = prepared.channels if prepared.channels is not None else prepared.square
    stored = preprocessing.quantise(pixels)
    t1 = time.perf_counter()
    timings["prepare"] += t1 - t0
    seen = image.facts.in_model(prepared.geometry)
    background = seen.background(prepared.square)
    paint = None
    if settings.marker_occlusion and seen.markers.any():  # analyze paints exactly these images
        paint = MarkerPaint(np.packbits(seen.occlusion().ravel()), int(preprocessing.img_size), background)
    group.add(stored, prepared.geometry, _orientation(prepared, row), background, paint)
    timings["facts"] += time.perf_counter() - t1


def prepare_unit(unit: Unit) -> PreparedUnit:
    """Stage 1: read every image of the chunk once, find its facts, and prepare it for each group."""
    from mammography.data.preprocess import Preprocessing

    timings = {"decode": 0.0, "prepare": 0.0, "facts": 0.0}
    groups = [PreparedGroup(work) for work in unit.groups]
    preprocessings = [Preprocessing.from_record(work.preprocessing) for work in unit.groups]
    facts = []
    for row in unit.chunk.rows:
        image = read_image(row, unit.settings, timings)
        for group, preprocessing in zip(groups, preprocessings):
            prepare_image(group, preprocessing, row, image, unit.settings, timings)
        facts.append(image.facts.to_arrays() if image.facts is not None and not image.error else None)
    return PreparedUnit(unit, groups, facts, timings, {"prepare": _worker()})


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
    """Stage 2's output: stage 1's groups and facts, and every run's maps."""

    unit: Unit
    groups: list[PreparedGroup]
    facts: list
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

        from mammography.machine import resolve_device
        from mammography.models import build_density_model

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
        return ExplainedUnit(unit, prepared.groups, prepared.facts, results, {**prepared.seconds, **timings},
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
        """Probability of the predicted class with the image's markers painted with its background
        (as ``analyze`` computes it: the images whose markers the model saw, :class:`MarkerPaint`)."""
        import torch

        from mammography.analysis.faithfulness import marker_occlusion

        n = len(unit.chunk)
        prob, drop, flip = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
        jobs = [i for i in ok if group.paint[i] is not None]
        for start in range(0, len(jobs), unit.batch_size):
            idx = jobs[start : start + unit.batch_size]
            images = torch.stack([preprocessing.to_tensor(preprocessing.dequantise(group.stored[i], group.geometries[i]))
                                  for i in idx])
            rows = np.asarray(idx)
            cls = np.nanargmax(probs[rows], axis=1)
            out = marker_occlusion(model, images, [group.paint[i].mask() for i in idx],
                                   [group.paint[i].background for i in idx], preprocessing.mean, preprocessing.std,
                                   cls, probs[rows, cls], batch_size=unit.batch_size)
            prob[rows], drop[rows] = out["marker_occlusion_prob"], out["marker_occlusion_drop"]
            flip[rows] = out["marker_occlusion_flip"]
        return {"marker_occlusion_prob": prob, "marker_occlusion_drop": drop, "marker_occlusion_flip": flip}


# ----------------------------------------------------------------------------- stage 3: metrics and write


def _metric_map(result: RunResult, i: int, y_pred: int) -> np.ndarray:
    """Image ``i``'s map of the deepest layer asked for (of the predicted class for ``--target all``)."""
    maps = result.arrays[f"maps/{result.layer_names[-1]}"]
    return maps[i, y_pred - 1] if maps.ndim == 4 else maps[i]


def measure_run(unit: Unit, group: PreparedGroup, result: RunResult, facts: list, y_pred: np.ndarray) -> dict:
    """Every per-image attention metric of one run on the chunk, by ``analyze``'s own
    :func:`~mammography.analysis.measure.measure_images` (NaN for the images not explained).

    Parameters
    ----------
    facts : per image its :class:`~mammography.analysis.facts.ImageFacts` (None where it has none).
    y_pred : per image the predicted class 1..4 (0 where not explained).

    Returns
    -------
    dict column -> float64 (n,).
    """
    from mammography.analysis.measure import measure_images

    settings, n = unit.settings, len(unit.chunk)
    ok = [i for i in range(n) if not result.errors[i]]
    heat = np.stack([_metric_map(result, i, int(y_pred[i])) for i in ok]) if ok else np.zeros((0, 1, 1), np.float32)
    measured = measure_images(heat, [group.geometries[i] for i in ok], [facts[i] for i in ok],
                              [dense_mask(facts[i], settings) for i in ok], border_fraction=settings.border_fraction,
                              attention_threshold=settings.attention_threshold, device="cpu")
    if settings.dense_source == "roi":  # no ROI, no dense tissue to measure against
        no_roi = np.array([facts[i].roi is None for i in ok], dtype=bool)
        for name in _DENSE_METRICS:
            measured[name][no_roi] = math.nan
    columns = {}
    for name, values in measured.items():
        columns[name] = np.full(n, math.nan)
        columns[name][ok] = values
    return columns


def metrics_table(unit: Unit, group: PreparedGroup, result: RunResult, facts: list) -> pd.DataFrame:
    """The job table rows of one run on one chunk (columns: :mod:`mammography.distributed`)."""
    from mammography.analysis.localisation import LOCALISATION_METRICS
    from mammography.analysis.measure import SPURIOUS_COLUMNS
    from mammography.analysis.patterns import PATTERN_METRICS
    from mammography.analysis.spurious import image_flags

    run, settings = result.task.run, unit.settings
    probs, logits = result.arrays["probs"], result.arrays["logits"]
    targets = result.arrays["targets"]
    y_pred = np.array([0 if result.errors[i] else int(np.argmax(probs[i])) + 1 for i in range(len(unit.chunk))],
                      dtype=np.int64)
    columns = measure_run(unit, group, result, facts, y_pred)
    metric_order = (*SPURIOUS_COLUMNS, "n_markers", "n_film_edges", *PATTERN_METRICS, "roi_area_share",
                    *LOCALISATION_METRICS)
    records = []
    for i, row in enumerate(unit.chunk.rows):
        error = result.errors[i]
        rec = {
            "run_id": run.run_id, "run_label": run.label, "seed": run.seed, "shard_id": result.task.shard_id,
            "archive_index": unit.chunk.start + i, "image_path": row["image_path"],
            "accession": row.get("accession"), "patient_id": row.get("patient_id"),
            "y_true": int(row["y_true"]), "y_pred": int(y_pred[i]),
            "confidence": float(probs[i, y_pred[i] - 1]) if y_pred[i] else math.nan,
        }
        for k, letter in enumerate(CLASS_LETTERS):
            rec[f"p_{letter}"] = float(probs[i, k])
        for k, letter in enumerate(CLASS_LETTERS):
            rec[f"logit_{letter}"] = float(logits[i, k])
        rec["target"] = int(targets[i]) + 1 if targets.ndim == 1 and not error else 0
        rec.update({key: group.orientation[i].get(key) for key in
                    ("laterality", "laterality_source", "view", "view_source")})
        f = facts[i]
        counts = {"n_markers": f.n_markers if f else 0, "n_film_edges": f.n_film_edges if f else 0}
        rec.update({c: counts[c] if c in counts else float(columns[c][i]) for c in metric_order})
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
    ``chunk``, ``n_images``, ``n_errors``; first one entry for the chunk
    (``run`` None) with its ``seconds`` per stage (``decode``, ``prepare``,
    ``facts`` -- the image facts and their placement in each group's model
    square --, ``cam``, ``occlusion``, ``metrics``, ``write``, for the whole
    chunk) and ``workers`` (``host:pid`` per stage).
    """
    from mammography.analysis.facts import ImageFacts
    from mammography.distributed.store import JobStore

    unit = explained.unit
    store = JobStore(Path(unit.out_dir))
    timings = dict(explained.seconds, metrics=0.0, write=0.0)
    written = []
    facts = [None if f is None else ImageFacts.from_arrays(f) for f in explained.facts]
    for group, results in zip(explained.groups, explained.results):
        if group.work.write_facts:
            t0 = time.perf_counter()
            store.write_facts(group.work.group_id, group.work.facts_id, facts_table(unit, group, facts))
            timings["write"] += time.perf_counter() - t0
        for result in results:
            t0 = time.perf_counter()
            table = metrics_table(unit, group, result, facts)
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
