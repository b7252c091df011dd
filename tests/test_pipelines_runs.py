"""Runs written by the earlier ``mammography-pipelines`` project's own code, read as they are.

The fixtures in ``tests/fixtures/pipelines`` (see its README) were made by
that project's training and cross-validation commands on our phantoms; the
probabilities and input tensors in ``reference/`` were computed by its own
dataset and model classes. Nothing here imitates its files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.cam.sweep import sweep_run
from mammography.data.preprocess import PIPELINES_CROP
from mammography.errors import ImageReadError
from mammography.io.pipelines import read_pipelines_image
from mammography.runs import PIPELINES_WRITER, load_cv_run, load_run

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines"
RUNS = ("seed42", "seed43", "autoresume")
TOLERANCE = 1e-4  # the bound on |ours - earlier code| per probability


def _reference(name: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "reference" / f"{name}_probs.csv")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A stand-in for the folder the earlier tool ran in: its inputs and runs linked in, nothing copied;
    the recorded working directory (a path of the machine that made the fixtures) is never needed."""
    for name in ("archive", "classificacao.csv", "phantoms_cv", "outputs"):
        (tmp_path / name).symlink_to(FIXTURES / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """One sweep per genuine run (read from the fixture folder as working directory)."""
    old = Path.cwd()
    os.chdir(FIXTURES)
    try:
        out = {}
        for name in RUNS:
            run = load_run(f"outputs/{name}/results")
            out[name] = (run, sweep_run(run, "features.8", device="cpu", progress=False))
        return out
    finally:
        os.chdir(old)


@pytest.mark.parametrize("name", RUNS)
def test_recomputed_probabilities_equal_the_earlier_code(sweeps, name):
    run, sweep = sweeps[name]
    assert run.writer == PIPELINES_WRITER and run.preprocessing.pipeline == PIPELINES_CROP
    assert "earlier mammography-pipelines run" in run.preprocessing.source
    ref = _reference(name).set_index("path")
    stored = pd.read_csv(run.path / "val_predictions.csv")["path"]
    expected = ref.loc[list(stored), ["p0", "p1", "p2", "p3"]].to_numpy()
    assert len(expected) == len(sweep) == 12
    assert np.abs(sweep.probs - expected).max() < TOLERANCE
    # every image was found beside the fixtures, not on the machine that made them
    assert all(p.startswith(str(FIXTURES)) for p in sweep.image_paths)


def test_input_tensors_equal_the_earlier_code_bit_for_bit():
    run = load_run(FIXTURES / "outputs/seed42/results")
    for k, accession in enumerate(("A0000000005_RMLO", "A0000000002_RMLO")):
        path = FIXTURES / "archive" / accession / f"{accession}.dcm"
        rgb = np.load(FIXTURES / "reference" / f"seed42_rgb_{k}.npy")
        np.testing.assert_array_equal(read_pipelines_image(path), rgb[..., 0])
        tensor = run.preprocessing.to_tensor(run.preprocessing.prepare(path))
        reference = torch.from_numpy(np.load(FIXTURES / "reference" / f"seed42_input_{k}.npy"))
        assert torch.equal(tensor, reference)


def test_checkpoint_epoch_predictions_and_metrics_are_used(sweeps):
    run, sweep = sweeps["seed42"]
    assert run.run_id == "seed42/results"
    assert run.metrics_source == "metrics/best_metrics.json"
    assert run.metrics["acc"] == pytest.approx(2 / 3) and run.metrics["kappa_quadratic"] == pytest.approx(0.4828, abs=1e-4)
    assert run.stored.source == "metrics/best_metrics.json (val_rows)" and run.stored.epoch == 3
    assert run.checkpoint_epoch == 3
    assert any("val_predictions.csv is from epoch 6, the checkpoint from epoch 3" in n for n in run.notes)
    check = run.check_predictions(sweep.probs)
    assert check.n_disagree == 0 and check.max_prob_diff < TOLERANCE
    # the recomputed metrics are the checkpoint's own
    for key, value in sweep.metrics().items():
        assert value == pytest.approx(run.metrics[key], abs=1e-6)
    # val_predictions.csv (the last epoch) really is another model's output
    last = pd.read_csv(run.path / "val_predictions.csv")
    last_probs = np.array([json.loads(p) for p in last["probs"]])
    assert np.abs(last_probs - sweep.probs).max() > 0.1


def test_a_resumed_run_is_named_for_what_does_not_match(sweeps):
    run, _ = sweeps["autoresume"]
    text = " | ".join(run.notes)
    assert "resume_epoch 7 comes after the last trained epoch 6" in text
    assert "splits/val.csv (drawn with summary.json's seed 45) shares 6 of 12 images" in text
    # our own runs and the earlier project's clean runs raise no such note
    assert not any("resume" in n for n in sweeps["seed42"][0].notes)


def test_relative_paths_resolve_against_run_cwd_and_recorded_cwd(tmp_path, monkeypatch):
    trained_in = tmp_path / "trained_in"
    (trained_in / "outputs").mkdir(parents=True)
    shutil.copytree(FIXTURES / "outputs/seed42", trained_in / "outputs/seed42")
    (trained_in / "archive").symlink_to(FIXTURES / "archive")
    summary_path = trained_in / "outputs/seed42/results/summary.json"
    summary = json.loads(summary_path.read_text())
    summary["reproducibility"]["cwd"] = str(trained_in)
    summary_path.write_text(json.dumps(summary))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = load_run(trained_in / "outputs/seed42/results")
    assert not run.missing_images
    assert all(Path(p).is_relative_to(trained_in) for p in run.predictions["image_path"])
    # with the recorded folder gone, the error lists every place tried
    summary["reproducibility"]["cwd"] = str(tmp_path / "gone")
    summary_path.write_text(json.dumps(summary))
    run = load_run(trained_in / "outputs/seed42/results")
    assert len(run.missing_images) == 12
    with pytest.raises(ImageReadError) as err:
        run.require_images()
    message = str(err.value)
    for place in (trained_in / "outputs/seed42/results", elsewhere, tmp_path / "gone"):
        assert str(place / "archive") in message
    assert "\n" not in message


def test_an_earlier_outdir_stands_for_its_results_folder(workdir):
    run = load_run("outputs/seed42")  # what the earlier project's --outdir was
    assert run.path == (workdir / "outputs/seed42/results").absolute() and run.run_id == "seed42/results"


def test_cross_validation_layout_is_read_and_rebuilt(workdir):
    cv = load_cv_run("outputs/cv")
    assert cv.writer == PIPELINES_WRITER and cv.k == 2 and cv.seed == 42
    numbers = [r.number for r in cv.records]
    assert numbers == [0, 1]
    fold0, fold1 = cv.records
    # accuracy and kappa were stored as 0.0 by the earlier code's own bug: never shown as results
    assert fold0.metrics["acc"] is None and fold0.metrics["kappa_quadratic"] is None
    assert fold0.metrics["macro_f1"] == pytest.approx(0.1061, abs=1e-4)
    assert "stored accuracy and kappa as 0.0" in fold0.metrics_note
    # fold 0 kept no weights: one line says so, without suggesting to retrain
    assert fold0.run is None and "no best_model.pt" in fold0.missing
    assert "train-density" not in fold0.missing
    assert [r.run_id for r in cv.folds] == ["cv/fold_1"]
    run = fold1.run
    assert len(run.predictions) == 96 and run.stored is None
    # the rebuilt validation images are the earlier split's, and the checkpoint (whose config pickles a
    # pathlib path) gives the earlier code's probabilities on them
    ref = _reference("cv_fold_1")
    ref = ref[ref["fold_1_val"]]
    paths = sorted(str((workdir / p).resolve()) for p in ref["path"])
    assert sorted(str(Path(p).resolve()) for p in run.predictions["image_path"]) == paths
    sweep = sweep_run(run, "features.8", device="cpu", progress=False)
    by_path = dict(zip((str((workdir / p).resolve()) for p in ref["path"]), ref[["p0", "p1", "p2", "p3"]].to_numpy()))
    expected = np.stack([by_path[str(Path(p).resolve())] for p in sweep.image_paths])
    assert np.abs(sweep.probs - expected).max() < TOLERANCE
    # and its stored macro-F1 (epoch 1, the weights kept) is what the recomputed predictions give
    assert sweep.metrics()["macro_f1"] == pytest.approx(fold1.metrics["macro_f1"], abs=1e-6)


def test_seed_workflow_on_earlier_runs(workdir, capsys, caplog):
    """The seed command verbatim (a lone ``--``), on two genuine runs."""
    from mammography.cli import main

    code = main(["report-pack", "--", "--run", "outputs/seed42/results", "outputs/seed43/results",
                 "--assets-dir", "Article/assets", "--device", "cpu", "--no-progress", "--no-analysis"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    said = captured.out + captured.err + caplog.text
    assert "disagree" not in said  # both checkpoints reproduce their own epoch's predictions
    assert "seed42/results: all 12 predictions recomputed from the checkpoint agree" in said
    assert "val_predictions.csv is from epoch 6, the checkpoint from epoch 3" in said
    manifest = json.loads((workdir / "Article/assets/report_manifest.json").read_text())
    records = {r["run_id"]: r for r in manifest["runs"]}
    assert set(records) == {"seed42/results", "seed43/results"}
    for record in records.values():
        assert record["n_disagree"] == 0 and record["writer"] == PIPELINES_WRITER
        assert record["preprocessing"]["pipeline"] == PIPELINES_CROP
        assert record["stored_predictions"] == "metrics/best_metrics.json (val_rows)"
    assert records["seed42/results"]["metrics_recomputed"]["acc"] == pytest.approx(2 / 3, abs=1e-6)
    tex = (workdir / "Article/sections/density_model.tex").read_text()
    assert "(stored)" not in tex  # recomputed and stored metrics agree: no second row
    assert "centre crop" in tex  # the tiles say the model saw a crop
    assert (workdir / "Article/assets/density_gradcam_seed42.png").is_file()


def _explorer_predictions(site: Path) -> dict:
    text = (site / "data.js").read_text()
    data = json.loads(text[text.index("=") + 1 :].rstrip().rstrip(";"))
    keys = [s["key"] for s in data["seeds"]]
    paths = {}
    for record in data["images"]:
        maps = (site / "maps" / f"{record['k']}.js").read_text()
        meta = json.loads(re.search(r",(\{.*\})\);", maps, re.S).group(1))["meta"]
        paths[meta["path"]] = dict(zip(keys, record["p"]))
    return paths, data["seeds"]


def test_every_command_shows_the_same_prediction(workdir, capsys):
    from mammography.cli import main

    runs = ["outputs/seed42/results", "outputs/seed43/results"]
    common = ["--device", "cpu", "--no-progress"]
    assert main(["explain", "--run", *runs, "--out", "explain", *common]) == 0
    assert main(["analyze", "--run", *runs, "--out", "analysis", "--no-figures", *common]) == 0
    assert main(["report-pack", "--run", *runs, "--assets-dir", "Article/assets", *common]) == 0
    assert main(["explore", "--run", *runs, "--out", "site", *common]) == 0
    capsys.readouterr()
    sweeps = {r: sweep_run(load_run(r), "features.8", device="cpu", progress=False) for r in runs}
    site, seeds = _explorer_predictions(workdir / "site")
    assert [s["stored_metrics"] for s in seeds] == [None, None]  # recomputed metrics read as stored
    for run_dir, seed in zip(runs, ("42", "43")):
        truth = dict(zip(sweeps[run_dir].image_paths, sweeps[run_dir].y_pred))
        folder = run_dir.removeprefix("outputs/").replace("/", "__")  # the run id, seed42/results
        explain = pd.read_csv(workdir / "explain" / folder / "cam_gradcam_predictions.csv")
        analyze = pd.read_csv(workdir / "analysis" / seed / "attention_per_image.csv")
        packed = pd.read_csv(workdir / "Article/assets/attention" / f"seed{seed}" / "attention_per_image.csv")
        for table in (explain, analyze, packed):
            assert dict(zip(table["image_path"], table["y_pred"])) == truth
            assert table["stored_y_pred"].isna().all()  # nothing differs, so nothing stands beside
        assert {p: v[f"seed{seed}"] for p, v in site.items() if v.get(f"seed{seed}") is not None} == truth
