"""Explaining a whole archive: shards, the job table, errors, resume, Ray (kill and retry), and --from.

The archive is the earlier project's genuine ``archive/`` of 40 phantom
DICOMs (tests/fixtures/pipelines) plus an unreadable file and a missing one;
the runs are its genuine seed 42 and 43 runs (96 px, the earlier project's
preprocessing). The Ray tests start a local Ray instance with two CPUs and
are skipped where Ray is not installed (``pip install 'mammography[ray]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammography.cam.record import load_record
from mammography.cli import main
from mammography.distributed import explain_archive, load_job, read_table, summarise_archive
from mammography.errors import ConfigError, RunError

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines"
RUNS = [str(FIXTURES / "outputs/seed42/results"), str(FIXTURES / "outputs/seed43/results")]
FOLDERS = ["seed42__results", "seed43__results"]
SHARD = 6
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'mammography[ray]')")


@pytest.fixture(scope="module")
def in_fixtures():
    old = Path.cwd()
    os.chdir(FIXTURES)  # the runs' validation images resolve from the folder they were trained in
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The 40 DICOMs as an image_path manifest, with an unreadable file at row 5 and a missing one at row 20."""
    from mammography.data import load_manifest

    root = tmp_path_factory.mktemp("archive")
    table = load_manifest(FIXTURES / "classificacao.csv", FIXTURES / "archive")
    rows = table[["image_path", "density_label", "accession", "patient_id", "view", "laterality"]].copy()
    broken = root / "broken.dcm"  # a DICOM cut short in its pixel data, as an interrupted copy leaves it
    whole = Path(table["image_path"].iloc[0]).read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    bad = pd.DataFrame([
        {"image_path": str(broken), "density_label": 2, "accession": "BROKEN", "patient_id": "P-BROKEN"},
        {"image_path": str(root / "gone.dcm"), "density_label": 3, "accession": "GONE", "patient_id": "P-GONE"},
    ])
    rows = pd.concat([rows.iloc[:5], bad.iloc[:1], rows.iloc[5:19], bad.iloc[1:], rows.iloc[19:]], ignore_index=True)
    path = root / "archive.csv"
    rows.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def local_job(archive, in_fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "local"
    result = explain_archive(archive, RUNS, out, engine="local", shard_size=SHARD, progress=False)
    return result


def _tables(folder: Path) -> pd.DataFrame:
    t = read_table(folder)
    return t.sort_values(["run_id", "archive_index"]).reset_index(drop=True)


def _assert_same_output(a: Path, b: Path) -> None:
    """Two job folders hold the same results: tables, records (maps bit for bit) and facts."""
    pd.testing.assert_frame_equal(_tables(a), _tables(b))
    for folder in FOLDERS:
        ra, rb = load_record(a / "runs" / folder), load_record(b / "runs" / folder)
        pd.testing.assert_frame_equal(ra.table, rb.table)
        np.testing.assert_array_equal(ra.layer("features.8"), rb.layer("features.8"))
    facts = sorted((a / "facts").rglob("*.parquet"))
    assert [p.relative_to(a) for p in facts] == [p.relative_to(b) for p in sorted((b / "facts").rglob("*.parquet"))]
    for p in facts:
        pd.testing.assert_frame_equal(pd.read_parquet(p), pd.read_parquet(b / p.relative_to(a)))


# ----------------------------------------------------------------------------- the job, in this process


def _assert_matches_the_sweep(job_dir: Path) -> None:
    """Each run's sharded record holds the single-machine sweep's predictions and maps (within 1e-5)."""
    from mammography.cam.sweep import sweep_run
    from mammography.runs import load_run

    for spec, folder in zip(RUNS, FOLDERS):
        run = load_run(spec)
        sweep = sweep_run(run, device="cpu", progress=False)
        record = load_record(job_dir / "runs" / folder)
        assert record.info["shards"] and len(record.info["shards"]) == 7
        maps = record.to_run_maps()
        where = {p: i for i, p in enumerate(maps.image_paths)}
        rows = [where[p] for p in sweep.image_paths]
        assert len(rows) == len(sweep) == 12
        np.testing.assert_allclose(maps.probs[rows], sweep.probs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(maps.logits[rows], sweep.logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(maps.maps["features.8"][rows], sweep.maps["features.8"], atol=1e-5, rtol=0)
        assert [maps.geometries[i] for i in rows] == sweep.geometries
        assert record.provenance["checkpoint_sha256"] == run.checkpoint_sha256
        assert record.provenance["preprocessing"] == run.preprocessing.to_record()


def test_job_equals_the_single_machine_sweep_for_two_runs(local_job):
    assert local_job.n_images == 42 and local_job.n_shards == 7 and local_job.computed == 14
    _assert_matches_the_sweep(local_job.out_dir)


def test_unreadable_images_are_rows_with_their_error(local_job):
    table = read_table(local_job.out_dir)
    assert len(table) == 2 * 42
    bad = table[table["error"] != ""]
    assert sorted(bad["archive_index"].unique()) == [5, 20]
    assert bad["y_pred"].eq(0).all() and bad[["p_A", "p_B", "p_C", "p_D"]].isna().all().all()
    assert not bad["spurious_flag"].any()
    assert bad.set_index("archive_index")["error"].str.contains("gone.dcm").loc[20].all()
    good = table[table["error"] == ""]
    assert good["y_pred"].between(1, 4).all()
    np.testing.assert_allclose(good[["p_A", "p_B", "p_C", "p_D"]].sum(axis=1), 1.0, atol=1e-5)
    # the record marks the same rows; their maps are zero
    record = load_record(local_job.out_dir / "runs" / FOLDERS[0])
    assert record.table["error"].ne("").to_numpy().nonzero()[0].tolist() == [5, 20]
    assert record.table["y_pred"].iloc[[5, 20]].eq(0).all()
    assert not np.asarray(record.layer("features.8"))[[5, 20]].any()
    job = load_job(local_job.out_dir)
    assert job["errors"] == {FOLDERS[0]: 2, FOLDERS[1]: 2}


def test_table_metrics_are_those_of_analyze(local_job):
    """Per image, the job's attention metrics equal analyze's on the run's validation images."""
    from mammography.analysis import AnalysisOptions, analyze_run

    analysis = analyze_run(RUNS[0], AnalysisOptions(dense_source="estimate", device="cpu"))
    mine = read_table(local_job.out_dir, runs=[FOLDERS[0]]).set_index("image_path")
    theirs = analysis.table.set_index("image_path")
    columns = ["outside_breast_share", "border_share", "marker_share", "n_markers", "dense_mass_share",
               "attended_breast_share", "outside_breast_ratio", "marker_occlusion_drop"]
    both = mine.loc[theirs.index, columns].astype(float)
    np.testing.assert_allclose(both.to_numpy(), theirs[columns].astype(float).to_numpy(), atol=1e-5, equal_nan=True)
    for flag in ("outside_breast_flag", "border_flag", "marker_flag", "spurious_flag"):
        assert mine.loc[theirs.index, flag].tolist() == theirs[flag].tolist()


def _analyze_on_the_job_maps(job_dir: Path, folder: str, run_spec, options):
    """``analyze_run`` of a run, fed the job's own maps and probabilities (its record, served from a
    MemoryStore as a stored sweep record is), so that any difference is in the measurement alone."""
    from mammography.analysis import analyze_run
    from mammography.cam.store import MemoryStore, SweepKey
    from mammography.runs import load_run

    run = load_run(run_spec)
    maps = load_record(job_dir / "runs" / folder).to_run_maps()
    where = {p: i for i, p in enumerate(maps.image_paths)}
    maps = maps.select([where[str(p)] for p in run.predictions["image_path"]])
    store = MemoryStore()
    store.put(maps, SweepKey.of(run, maps.method, maps.target_mode))
    return analyze_run(run, options, store=store)


_METRICS = ["outside_breast_share", "outside_breast_area", "border_share", "border_area", "marker_share",
            "marker_area", "film_edge_share", "film_edge_area", "n_markers", "n_film_edges", "iou", "dice",
            "pointing_hit", "energy_pointing", "roi_area_share", "dense_mass_share", "dense_area_share",
            "dense_margin", "attended_breast_share", "marker_occlusion_prob", "marker_occlusion_drop",
            "outside_breast_ratio", "border_ratio", "marker_enrichment", "film_edge_ratio"]
_FLAGS = ["marker_occlusion_flip", "outside_breast_flag", "border_flag", "marker_flag", "film_edge_flag",
          "spurious_flag"]


@pytest.fixture(scope="module")
def fit_pad_job(tmp_path_factory):
    """This project's fit-pad run on phantoms whose manifest gives ROI and breast masks and a marker box per
    image (the job reads each file once for the facts and the model input), measured with ``--dense-source roi``."""
    from _runs import phantom_rows, write_run

    from mammography.distributed import MetricSettings

    root = tmp_path_factory.mktemp("fitpad")
    rows = phantom_rows(root / "phantoms", n=8, seed=5, size=(160, 128), shortcut=2, class_mix=(0.25,) * 4)
    run = write_run(root / "run", rows, seed=7)
    manifest = root / "archive.csv"
    rows.to_csv(manifest, index=False)
    result = explain_archive(manifest, [str(run)], root / "job", engine="local", shard_size=3, progress=False,
                             settings=MetricSettings(analysis_size=96, dense_source="roi"))
    return result, run, rows


@pytest.mark.parametrize("case", ["pipelines-crop, dense estimate", "fit-pad with mask files, dense roi"])
def test_job_metrics_are_analyze_run_metrics(case, local_job, fit_pad_job):
    """One implementation: on the same maps, every per-image attention metric, the marker occlusion and the
    flags of the job table are analyze_run's (same analysis size, dense source and marker occlusion)."""
    from mammography.analysis import AnalysisOptions

    if case.startswith("pipelines"):
        job_dir, folder, spec = local_job.out_dir, FOLDERS[0], RUNS[0]
        options = AnalysisOptions(analysis_size=256, dense_source="estimate", device="cpu")
    else:
        result, spec, rows = fit_pad_job
        job_dir, folder = result.out_dir, result.runs[0].folder
        options = AnalysisOptions(analysis_size=96, dense_source="roi", device="cpu")
        assert rows["artifact_bbox"].fillna("").ne("").any() and rows["roi_path"].notna().all()
    theirs = _analyze_on_the_job_maps(job_dir, folder, spec, options).table.set_index("image_path")
    mine = read_table(job_dir, runs=[folder]).set_index("image_path").loc[theirs.index]
    assert (mine["error"] == "").all() and (mine["y_pred"] == theirs["y_pred"]).all()
    assert mine["n_markers"].gt(0).any()
    if case.startswith("fit-pad"):  # (the earlier project's centre crop cuts the fixtures' markers out)
        assert theirs["iou"].notna().all() and theirs["marker_occlusion_prob"].notna().sum() >= 2
    np.testing.assert_allclose(mine[_METRICS].astype(float).to_numpy(), theirs[_METRICS].astype(float).to_numpy(),
                               atol=1e-6, rtol=0, equal_nan=True)
    assert mine[_FLAGS].astype(bool).equals(theirs[_FLAGS].astype(bool))


def test_rerun_skips_finished_shards_and_redoes_a_missing_one(local_job, archive, tmp_path):
    out = tmp_path / "job"
    shutil.copytree(local_job.out_dir, out)
    parts = sorted((out / "table").rglob("*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    again = explain_archive(archive, RUNS, out, engine="local", shard_size=SHARD, progress=False)
    assert (again.computed, again.skipped) == (0, 14)
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    # one shard lost (say, a node's disk): only it is computed again, and the result is the same
    job = load_job(out)
    lost = job["chunks"][3]["shards"][FOLDERS[1]]
    shutil.rmtree(out / "runs" / FOLDERS[1] / "shards" / lost)
    again = explain_archive(archive, RUNS, out, engine="local", shard_size=SHARD, progress=False)
    assert (again.computed, again.skipped) == (1, 13)
    assert {p: p.stat().st_mtime_ns for p in parts if lost not in p.name} == \
        {p: t for p, t in stamps.items() if lost not in p.name}
    _assert_same_output(local_job.out_dir, out)
    assert len(load_job(out)["history"]) == 3


def test_shards_are_identified_by_content(local_job, archive, tmp_path):
    """The same images as a Parquet manifest elsewhere: every shard is found; another layer is not."""
    out = tmp_path / "job"
    shutil.copytree(local_job.out_dir, out)
    parquet = tmp_path / "elsewhere" / "archive.parquet"
    parquet.parent.mkdir()
    pd.read_csv(archive).to_parquet(parquet, index=False)
    again = explain_archive(parquet, RUNS, out, engine="local", shard_size=SHARD, progress=False)
    assert (again.computed, again.skipped) == (0, 14)
    assert load_job(out)["manifest"]["path"] == str(parquet)
    with pytest.raises(ConfigError, match="shard-size"):
        explain_archive(parquet, RUNS, out, engine="local", shard_size=0, progress=False)


def test_summary_streams_flag_rates_classes_and_agreement(local_job, tmp_path):
    summary = summarise_archive(local_job.out_dir, consistency_file=tmp_path / "consistency.parquet")
    table = read_table(local_job.out_dir)
    ok = table[table["error"] == ""]
    for run in summary.runs:
        mine = ok[ok["run_label"] == run["label"]]
        assert run["n_images"] == 40 and run["n_errors"] == 2
        assert run["flag_rates"]["outside_breast"] == pytest.approx(mine["outside_breast_flag"].mean())
        assert run["accuracy"] == pytest.approx((mine["y_true"] == mine["y_pred"]).mean())
        assert run["means"]["border_share"]["mean"] == pytest.approx(mine["border_share"].mean())
        for k, c in run["by_class"].items():
            part = mine[mine["y_true"] == int(k)]
            assert c["n_images"] == len(part)
            assert c["means"]["dense_margin"]["mean"] == pytest.approx(part["dense_margin"].mean(), nan_ok=True)
    c = summary.consistency
    wide = ok.pivot(index="archive_index", columns="run_label", values="y_pred")
    assert c["n_images"] == 40 and c["runs"] == ["42", "43"]
    assert c["prediction_agreement_rate"] == pytest.approx((wide["42"] == wide["43"]).mean())
    per_image = pd.read_parquet(tmp_path / "consistency.parquet")
    assert len(per_image) == 40 and per_image["archive_index"].is_monotonic_increasing
    assert (per_image["agreement"] == "high agreement").sum() == c["n_high_agreement"]
    assert per_image["rho_42_43"].dropna().between(-1, 1).all()


def test_cli_analyze_and_report_pack_from_a_job(local_job, tmp_path, capsys):
    assert main(["analyze", "--from", str(local_job.out_dir), "--out", str(tmp_path / "analysis"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "run 42: 40 images, 2 unreadable" in printed and "consistency:" in printed
    names = sorted(p.name for p in (tmp_path / "analysis").iterdir())
    assert names == ["archive_by_class.csv", "archive_runs.csv", "archive_summary.json", "archive_tables.md",
                     "archive_tables.tex", "consistency.parquet"]
    runs = pd.read_csv(tmp_path / "analysis" / "archive_runs.csv")
    assert runs["n_errors"].tolist() == [2, 2]
    article = tmp_path / "Article"
    (article / "README.md").parent.mkdir()
    (article / "README.md").write_text("# Results\n\nkept\n")
    assert main(["report-pack", "--from", str(local_job.out_dir), "--assets-dir", str(article / "assets"),
                 "--tex", str(article / "sections" / "archive.tex"), "--markdown", str(article / "README.md"),
                 "--no-progress"]) == 0
    tex = (article / "sections" / "archive.tex").read_text()
    assert "tab:archive-runs" in tex and "tab:archive-consistency" in tex
    md = (article / "README.md").read_text()
    assert md.startswith("# Results\n\nkept\n") and "**Agreement across runs.**" in md
    summary = json.loads((article / "assets" / "archive_summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["42", "43"]


def test_cli_errors_are_one_line(local_job, tmp_path, capsys):
    assert main(["explain", "--run", RUNS[0], "--engine", "ray", "--out", str(tmp_path / "x")]) == 2
    assert "--engine ray explains an archive" in capsys.readouterr().err
    assert main(["analyze", "--out", str(tmp_path / "y")]) == 2
    assert "--run RUN (or an archive job with --from DIR)" in capsys.readouterr().err
    assert main(["analyze", "--from", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "holds no finished archive job" in capsys.readouterr().err
    assert main(["report-pack", "--from", str(local_job.out_dir), "--run", RUNS[0]]) == 2
    assert "either --from DIR or --run" in capsys.readouterr().err
    with pytest.raises(RunError):
        summarise_archive(tmp_path)


# ----------------------------------------------------------------------------- the job on Ray


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_job(ray_instance, archive, in_fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "ray"
    argv = ["explain", "--engine", "ray", "--manifest", str(archive), "--run", RUNS[0], "--run", RUNS[1],
            "--out", str(out), "--shard-size", str(SHARD), "--no-progress"]
    assert main(argv) == 0
    return out, argv


@needs_ray
def test_ray_job_writes_what_one_process_writes(ray_job, local_job, capsys):
    out, argv = ray_job
    _assert_matches_the_sweep(out)
    _assert_same_output(local_job.out_dir, out)
    job = load_job(out)
    assert job["history"][-1]["engine"]["engine"] == "ray"
    assert job["history"][-1]["shards_computed"] == 14
    cam_workers = {c["workers"]["cam"] for c in job["chunks"]}
    prepare_workers = {c["workers"]["prepare"] for c in job["chunks"]}
    assert not cam_workers & prepare_workers  # decoding ran in tasks, not in the model actor
    # the same command again: every shard is found, nothing is written, Ray is not even started
    parts = {p: p.stat().st_mtime_ns for p in (out / "table").rglob("*.parquet")}
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 shards computed, 14 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "table").rglob("*.parquet")} == parts


def _ray_processes(title: str) -> list[int]:
    """PIDs of this machine's processes whose title starts with ``title`` (Ray names workers by their task)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(title):
                found.append(int(entry.name))
    return found


@needs_ray
def test_ray_workers_killed_mid_job_are_retried_with_identical_output(ray_job, archive, tmp_path):
    """SIGKILL a decoding task's worker and the model actor while each is working: Ray retries the
    task and restarts the actor, and the job ends with exactly the output of an undisturbed job."""
    reference, _ = ray_job
    out = tmp_path / "job"
    killed: dict[str, int] = {}
    done = threading.Event()

    def killer():
        while not done.is_set() and len(killed) < 2:
            if "prepare" not in killed:
                for pid in _ray_processes("ray::Map(_prepare_row)"):
                    os.kill(pid, signal.SIGKILL)
                    killed["prepare"] = pid
                    break
            # the actor's title ends in .submit while it computes a chunk
            if "cam" not in killed:
                for pid in _ray_processes("ray::MapWorker(MapBatches(_CamActor)).submit"):
                    os.kill(pid, signal.SIGKILL)
                    killed["cam"] = pid
                    break
            time.sleep(0.01)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        result = explain_archive(archive, RUNS, out, engine="ray", shard_size=SHARD, progress=False)
    finally:
        done.set()
        watcher.join()
    assert set(killed) == {"prepare", "cam"}, f"the job ended before both kills ({killed})"
    assert result.computed == 14
    _assert_same_output(reference, out)
    cam_workers = {c["workers"]["cam"].split(":")[1] for c in load_job(out)["chunks"]}
    assert cam_workers - {str(killed["cam"])}  # a restarted actor finished the job


def test_readme_queries_run_on_a_job(local_job, tmp_path, monkeypatch):
    """The README's DuckDB and pandas examples, run as written on a job in outputs/archive."""
    import re
    import subprocess
    import sys

    duckdb = pytest.importorskip("duckdb")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    (sql,) = re.findall(r"^```sql\n(.*?)^```", section, re.S | re.M)
    (py,) = re.findall(r"^```py\n(.*?)^```", section, re.S | re.M)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "archive").symlink_to(local_job.out_dir)
    monkeypatch.chdir(tmp_path)
    statements = [s for s in sql.split(";") if "SELECT" in s]
    results = [duckdb.sql(s).df() for s in statements]
    by_class, disagree, unreadable = results
    assert len(by_class) == 8 and by_class["images"].sum() == 80
    table = read_table(local_job.out_dir)
    ok = table[table["error"] == ""]
    assert len(disagree) == int((ok.groupby("image_path")["y_pred"].nunique() > 1).sum())
    assert unreadable["archive_index"].tolist() == [5, 20]
    out = subprocess.run([sys.executable, "-c", py], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "marker_flag" in out.stdout and "marker_share" in out.stdout
