"""The archive job's driver: plan, run the stages on Ray (or in this process), write the run records.

:func:`explain_archive` is ``mammography explain --engine ray --manifest
ARCHIVE --run R ... --out DIR``. The driver

1. locks ``DIR`` (one job writes a folder at a time; temporary files of
   killed writers are removed), reads the runs (each checkpoint is loaded and
   hashed once, here: a bad checkpoint stops the job before any work) and the
   manifest (any accepted form, CSV or Parquet; files are not checked here:
   an image that cannot be read becomes a row with its error);
2. plans the chunks and their content ids (:mod:`mammography.distributed.plan`)
   and leaves out every shard already in ``DIR``;
3. runs the stages (:mod:`mammography.distributed.stages`) as a Ray Data
   pipeline -- the chunks as a dataset of one block each, decoding in CPU
   tasks, an actor pool holding one copy of every run's model (``num_gpus``
   per actor where the cluster has GPUs), metrics and writes in CPU tasks --
   or, with ``engine="local"``, one chunk after another in this process;
4. writes each run's root ``record.json`` and ``job.json`` once every shard
   exists.

Ray retries a task whose worker died (three times) and restarts a dead
actor, re-running its chunk; every write is atomic and a shard's content
depends on its inputs only, so a retried chunk writes the same bytes' worth
of results. An interrupted job is resumed by running the same command again.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from mammography.distributed.plan import (
    DEFAULT_SHARD_SIZE,
    ArchivePlan,
    MetricSettings,
    RunSpec,
    Unit,
    archive_rows,
)
from mammography.distributed.store import JOB_FORMAT, JOB_FORMAT_VERSION, JobStore
from mammography.errors import ConfigError

__all__ = ["ENGINES", "ArchiveResult", "explain_archive", "load_archive_runs"]

log = logging.getLogger(__name__)

ENGINES = ("ray", "local")


@dataclass(eq=False)
class ArchiveResult:
    """What :func:`explain_archive` did.

    Attributes
    ----------
    out_dir : the job folder.
    runs : the runs' specs.
    n_images : images in the archive.
    n_shards : shards per run.
    computed, skipped : run shards computed now / found finished.
    errors : run folder -> images that could not be explained.
    seconds : wall time of the whole call and per stage (summed over workers).
    job_file : ``job.json``.
    """

    out_dir: Path
    runs: list[RunSpec]
    n_images: int
    n_shards: int
    computed: int
    skipped: int
    errors: dict
    seconds: dict
    job_file: Path
    notes: list[str] = field(default_factory=list)


def load_archive_runs(specs, layers=None, method: str = "gradcam", targets="predicted",
                      outputs_root: str | Path = Path("outputs")) -> tuple[list[RunSpec], dict]:
    """The runs named by ``specs`` (cross-validation roots: their folds) as :class:`RunSpec`\\ s with their weights.

    Each checkpoint is loaded once here (errors stop the job before any work)
    and hashed; the layers and method are resolved on the model.

    Returns
    -------
    (runs, weights): weights maps each run's folder to its model's state_dict.
    """
    from mammography.analysis import run_labels
    from mammography.cam.explain import run_folder_name
    from mammography.cam.methods import create_cam
    from mammography.cam.sweep import target_mode_name
    from mammography.runs import expand_folds, open_runs

    target_mode = target_mode_name(targets)
    runs = expand_folds(open_runs(specs, outputs_root=outputs_root))
    if not runs:
        raise ConfigError("no run to explain; give at least one --run")
    labels = run_labels(runs)
    specs_out, weights = [], {}
    for run, label in zip(runs, labels):
        model = run.load_model(device="cpu")
        cam = create_cam(method, model, layers)
        folder = run_folder_name(run.run_id)
        specs_out.append(RunSpec(
            run_id=run.run_id, folder=folder, label=label, seed=run.seed, run_path=str(run.path),
            checkpoint_sha256=run.checkpoint_sha256, preprocessing=run.preprocessing.to_record(),
            method=cam.name, layers=tuple(cam.layer_names), target_mode=target_mode, targets=targets,
        ))
        weights[folder] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return specs_out, weights


def _load_archive(manifest: Path, dicom_root) -> tuple[list[dict], str]:
    from mammography.atomic import sha256_file
    from mammography.data import load_manifest
    from mammography.errors import ManifestError

    table = load_manifest(manifest, dicom_root, check_files=False)
    if not len(table):
        raise ManifestError(f"manifest {manifest} lists no image to explain")
    return archive_rows(table), sha256_file(manifest)


def explain_archive(
    manifest: str | Path,
    runs,
    out_dir: str | Path,
    *,
    dicom_root: str | Path | None = None,
    layers=None,
    method: str = "gradcam",
    targets: str | int = "predicted",
    settings: MetricSettings = MetricSettings(),
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 8,
    engine: str = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    device: str = "auto",
    autocast: str | None = None,
    outputs_root: str | Path = Path("outputs"),
    progress: bool = True,
) -> ArchiveResult:
    """Explain every image of an archive with every run, as sharded run records and one Parquet table.

    Parameters
    ----------
    manifest : the archive's manifest (any form :func:`mammography.data.load_manifest`
        accepts; ``.csv`` or ``.parquet``).
    runs : run directories, names under ``outputs_root``, globs or
        cross-validation roots (:func:`mammography.runs.resolve_runs`).
    out_dir : the job folder (layout: :mod:`mammography.distributed.store`);
        on a cluster a path every node sees (shared storage), like the images
        and the manifest.
    dicom_root : for manifests of the ``AccessionNumber, Classification`` form.
    layers, method, targets : the maps (as for :func:`mammography.cam.sweep.sweep_run`).
    settings : the per-image attention metrics (:class:`MetricSettings`).
    shard_size : images per shard (one stored map chunk per shard: 256).
    batch_size : images per CAM batch.
    engine : ``"ray"`` (a Ray Data job) or ``"local"`` (the same stages in this process).
    address : Ray cluster to join (``"auto"``, ``"ray://HOST:PORT"``); None
        starts a local Ray instance (or uses the one this process started).
    num_cpus : CPUs of a local Ray instance started here (default: all).
    actors : model actors (default: one per GPU, else half the CPUs).
    cpus_per_actor, gpus_per_actor : resources of each actor (GPUs default
        to 1 where the cluster has GPUs, else 0).
    device, autocast : where and how the models run in the actors.
    progress : a progress bar over the chunks.

    Returns
    -------
    ArchiveResult

    Raises
    ------
    ConfigError, ManifestError, RunError, CheckpointError
        Bad option, manifest or run (before any work starts).
    OutputError
        The folder cannot be written or another process writes it.
    """
    from mammography.atomic import OutputLock
    from mammography.limits import MAX_BATCH_SIZE, check_int

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray":
        _require_ray()
    check_int(batch_size, "batch size", 1, MAX_BATCH_SIZE)
    settings.validate()
    out = Path(out_dir).absolute()
    t0 = time.perf_counter()
    with OutputLock(folders=[out], command="mammography explain --manifest"):
        specs, weights = load_archive_runs(runs, layers, method, targets, outputs_root)
        rows, manifest_sha = _load_archive(Path(manifest), dicom_root)
        plan = ArchivePlan.build(Path(manifest).absolute(), manifest_sha, rows, specs, settings, shard_size)
        store = JobStore(out)
        units, skipped = plan.units(store, batch_size)
        log.info("%d images in %d chunks x %d runs: %d shards finished, %d chunks to compute", plan.n_images,
                 len(plan.chunks), len(specs), skipped, len(units))
        if not units:
            summaries, engine_info = [], {"engine": engine, "note": "every shard was finished"}
        elif engine == "ray":
            summaries, engine_info = _run_ray(units, weights, address=address, num_cpus=num_cpus, actors=actors,
                                              cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                                              device=device, autocast=autocast, progress=progress)
        else:
            summaries, engine_info = _run_local(units, weights, device=device, autocast=autocast, progress=progress)
        return _finish_job(plan, store, summaries, engine_info, skipped, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- engines


def _require_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'mammography[ray]' "
                          "(or use --engine local to run the same job in this process)") from None


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="archive", unit="chunk", disable=not progress, leave=False)


def _run_local(units: list[Unit], weights: dict, *, device, autocast, progress) -> tuple[list[dict], dict]:
    from mammography.distributed.stages import CamStage, run_unit_locally

    stage = CamStage(weights, device=device, autocast=autocast)
    summaries = []
    with _bar(len(units), progress) as bar:
        for unit in units:
            summaries.extend(run_unit_locally(unit, stage))
            bar.update(1)
    return summaries, {"engine": "local", "device": str(stage.device)}


def _prepare_row(row: dict) -> dict:
    from mammography.distributed.stages import prepare_unit

    return {"unit": pickle.dumps(prepare_unit(pickle.loads(row["unit"])), protocol=5)}


def _finish_row(row: dict) -> dict:
    from mammography.distributed.stages import finish_unit

    return {"summary": pickle.dumps(finish_unit(pickle.loads(row["unit"])), protocol=5)}


class _CamActor:
    """Ray Data callable class around :class:`~mammography.distributed.stages.CamStage`."""

    def __init__(self, weights, device: str, autocast, threads: int):
        import ray

        from mammography.distributed.stages import CamStage

        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        self.stage = CamStage(weights, device=device, autocast=autocast, threads=threads)

    def __call__(self, batch: dict) -> dict:
        return {"unit": [pickle.dumps(self.stage(pickle.loads(u)), protocol=5) for u in batch["unit"]]}


def _decode_memory(units: list[Unit]) -> int:
    """Bytes a decoding task reserves: the worker process itself (~0.3 GB with numpy, torch and pydicom
    imported) and a full-field DICOM's decoding (~0.5 GB at 4000 x 3300 px, 16 bit), plus the chunk's
    squares in their stored form. (Ray warned at 0.41 GB of a 0.5 GB reservation on 1024 x 832 phantoms
    and at 0.49 GB on 3328 x 2560 ones.)"""
    side = max(int(g.preprocessing["img_size"]) for u in units for g in u.groups)
    images = max(len(u.chunk) * len(u.groups) for u in units)
    return (1 << 30) + images * side * side * 2 * 3


def _ray_init(address: str | None, num_cpus: int | None) -> bool:
    """Join (or start) Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot start or join {where} ({exc}); start one with 'ray start --head' "
                          "on the head node, or leave out --address to start Ray on this machine") from None
    return True


def _run_ray(units: list[Unit], weights: dict, *, address, num_cpus, actors, cpus_per_actor, gpus_per_actor,
             device, autocast, progress) -> tuple[list[dict], dict]:
    import ray
    import ray.data

    started = _ray_init(address, num_cpus)
    try:
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        gpus_per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
        if gpus_per_actor and not gpus:
            raise ConfigError(f"--gpus-per-actor {gpus_per_actor:g} but the Ray cluster has no GPU")
        if actors is None:
            actors = max(1, int(gpus // gpus_per_actor) if gpus_per_actor else int(cpus // (2 * cpus_per_actor)))
        actors = max(1, min(int(actors), len(units)))
        if device == "auto":
            device = "cuda" if gpus_per_actor else "cpu"
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        weights_ref = ray.put(weights)
        ds = ray.data.from_items([{"unit": pickle.dumps(u, protocol=5)} for u in units],
                                 override_num_blocks=len(units))
        # Decoding reserves the memory it needs, so a node runs no more decoders than its memory holds;
        # as the actors reserve none, this also keeps Ray Data from fusing the decoding into the model
        # actors (a GPU actor must not decode). Ray retries a task whose worker died (3 times).
        ds = ds.map(_prepare_row, num_cpus=1, memory=_decode_memory(units))
        ds = ds.map_batches(
            _CamActor, batch_size=1, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"weights": weights_ref, "device": device, "autocast": autocast,
                                   "threads": max(1, int(cpus_per_actor))},
        )
        ds = ds.map(_finish_row, num_cpus=1)
        summaries = []
        with _bar(len(units), progress) as bar:
            for row in ds.iter_rows():
                summaries.extend(pickle.loads(row["summary"]))
                bar.update(1)
        info = {"engine": "ray", "ray_version": ray.__version__, "address": address or "local",
                "cluster_cpus": cpus, "cluster_gpus": gpus, "actors": actors, "cpus_per_actor": cpus_per_actor,
                "gpus_per_actor": gpus_per_actor, "device": device}
        return summaries, info
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- the end


def _finish_job(plan: ArchivePlan, store: JobStore, summaries: list[dict], engine_info: dict, skipped: int,
                wall: float) -> ArchiveResult:
    """Every run's root record and ``job.json``, once every shard is there."""
    import json

    from mammography import __version__
    from mammography.errors import RunError

    previous = {}
    if store.job_file.is_file():
        try:
            previous = json.loads(store.job_file.read_text())
        except (OSError, ValueError):
            previous = {}
    old_chunks = {c.get("key"): c for c in previous.get("chunks", [])}
    units = {s["chunk"]: s for s in summaries if s["run"] is None}
    errors_by_shard = {(s["run"], s["shard_id"]): s["n_errors"] for s in summaries if s["run"] is not None}
    chunks, errors = [], {run.folder: 0 for run in plan.runs}
    for chunk in plan.chunks:
        entry = {"index": chunk.index, "start": chunk.start, "n_images": len(chunk), "key": chunk.key,
                 "shards": {}, "facts": {}}
        for group_id, runs in plan.groups().items():
            entry["facts"][group_id] = plan.facts_id(runs[0].preprocessing, chunk)
        for run in plan.runs:
            shard_id = plan.shard_id(run, chunk)
            if not store.shard_done(run, shard_id):
                raise RunError(f"{store.shard_dir(run, shard_id)} is missing after the job; rerun the command")
            n_err = errors_by_shard.get((run.folder, shard_id))
            if n_err is None:
                n_err = int(old_chunks.get(chunk.key, {}).get("errors", {}).get(run.folder, _count_errors(
                    store.table_part(run, shard_id))))
            entry["shards"][run.folder] = shard_id
            entry.setdefault("errors", {})[run.folder] = n_err
            errors[run.folder] += n_err
        now = units.get(chunk.index)
        before = old_chunks.get(chunk.key, {})
        entry["seconds"] = now["seconds"] if now else before.get("seconds")
        entry["workers"] = now["workers"] if now else before.get("workers")
        chunks.append(entry)
    for run in plan.runs:
        shards = [{"id": c["shards"][run.folder], "path": f"shards/{c['shards'][run.folder]}",
                   "n_images": c["n_images"]} for c in chunks]
        store.write_run_record(run, shards)
    stage_totals: dict = {}
    for s in units.values():
        for k, v in s["seconds"].items():
            stage_totals[k] = stage_totals.get(k, 0.0) + v
    computed = sum(s.get("runs_computed", 0) for s in units.values())
    invocation = {"engine": engine_info, "wall_seconds": round(wall, 3), "chunks_computed": len(units),
                  "shards_computed": computed, "shards_skipped": skipped,
                  "stage_seconds": {k: round(v, 3) for k, v in stage_totals.items()},
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    info = {
        "format": JOB_FORMAT,
        "format_version": JOB_FORMAT_VERSION,
        "tool_version": __version__,
        "manifest": {"path": str(plan.manifest), "sha256": plan.manifest_sha256, "n_images": plan.n_images},
        "shard_size": plan.shard_size,
        "settings": plan.settings.to_dict(),
        "metrics_layer": {run.folder: run.layers[-1] for run in plan.runs},
        "runs": [{"folder": r.folder, "run_id": r.run_id, "label": r.label, "seed": r.seed, "group": r.group,
                  "record": f"runs/{r.folder}", "table": f"table/{r.folder}", "provenance": r.provenance()}
                 for r in plan.runs],
        "groups": {g: {"preprocessing": runs[0].preprocessing, "runs": [r.folder for r in runs],
                       "facts": f"facts/{g}"} for g, runs in plan.groups().items()},
        "chunks": chunks,
        "errors": errors,
        "history": (previous.get("history") or [])[-49:] + [invocation],
    }
    job_file = store.write_job(info)
    return ArchiveResult(out_dir=store.root, runs=plan.runs, n_images=plan.n_images, n_shards=len(plan.chunks),
                         computed=computed, skipped=skipped, errors=errors,
                         seconds={"wall": wall, **stage_totals}, job_file=job_file)


def _count_errors(table_part: Path) -> int:
    import pyarrow.parquet as pq

    column = pq.read_table(table_part, columns=["error"]).column(0).to_pylist()
    return sum(bool(e) for e in column)
