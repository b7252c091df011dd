"""A run trained on digitised-film exports, and a collapsed model: what the commands say about them.

The run is trained by ``train_density`` (one epoch, 64 px) on the 16-bit PNG
exports of film phantoms, whose patient ids are per image. A copy of it whose
classification head is zeroed gives every image the same probabilities (the
output provably does not depend on the image): the collapse every command
must report.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.training.metrics import COLLAPSE_STD, prediction_collapse


@pytest.fixture(scope="module")
def film_run(tmp_path_factory):
    from mammography.synth import generate_dataset
    from mammography.training.train import TrainConfig, train_density

    root = tmp_path_factory.mktemp("film_run")
    generate_dataset(root / "film", n=24, seed=5, size=(256, 160), style="film", class_mix=(1, 1, 1, 0))
    handler = _Capture()
    logger = logging.getLogger("mammography")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run_dir = train_density(TrainConfig(
            csv=root / "film" / "manifest_png.csv", outdir=root / "outputs", seed=42, epochs=1, batch_size=8,
            img_size=64, val_frac=0.34, device="cpu", cache_dir=root / "cache", progress=False))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return root, Path(run_dir), handler.lines


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def collapsed(film_run):
    """A copy of the run whose head is zero: constant logits, the same probabilities for every image."""
    root, run_dir, _ = film_run
    copy = root / "outputs" / "collapsed"
    shutil.copytree(run_dir, copy)
    state = torch.load(copy / "best_model.pth", weights_only=True)
    state["classifier.1.weight"].zero_()
    state["classifier.1.bias"].copy_(torch.tensor([0.1, 0.4, -0.2, 0.0]))
    torch.save(state, copy / "best_model.pth")
    return copy


def test_training_log_and_summary_say_how_patients_were_grouped(film_run):
    root, run_dir, lines = film_run
    grouped = [line for line in lines if line.startswith("patients: grouped")]
    assert grouped and "patient_id without view/laterality suffix + accession" in grouped[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["split"]["grouping"] == "patient_id without view/laterality suffix + accession"
    split = pd.read_csv(run_dir / "split.csv")
    film = pd.read_csv(root / "film" / "manifest_png.csv")
    women = film.set_index(film["image_path"].map(lambda p: str((root / "film" / p).resolve())))["woman"]
    split["woman"] = split["image_path"].map(lambda p: women[str(Path(p).resolve())])
    assert (split.groupby("woman")["split"].nunique() == 1).all()
    assert split.groupby("woman")["patient_group"].nunique().eq(1).all()


def test_training_says_whether_the_model_collapsed(film_run):
    _, run_dir, lines = film_run
    predictions = pd.read_csv(run_dir / "val_predictions.csv")
    expected = prediction_collapse(predictions[["p_A", "p_B", "p_C", "p_D"]].to_numpy())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["collapse"] == expected
    warned = [line for line in lines if "does not depend on the image" in line]
    assert bool(warned) == bool(expected) and all(line.startswith(str(run_dir)) for line in warned)


def test_val_predictions_show_laterality_view_and_their_source(film_run):
    root, run_dir, _ = film_run
    predictions = pd.read_csv(run_dir / "val_predictions.csv")
    film = pd.read_csv(root / "film" / "manifest_png.csv")
    truth = film.set_index(film["image_path"].map(lambda p: Path(p).name))
    names = predictions["image_path"].map(lambda p: Path(p).name)
    assert (predictions["laterality"].to_numpy() == truth.loc[names, "true_laterality"].to_numpy()).all()
    assert set(predictions["laterality_source"]) <= {"file name", "image"} and len(set(predictions["laterality_source"])) == 2
    assert set(predictions["view_source"]) <= {"file name", "image"}


def test_prediction_collapse_known_answers():
    rng = np.random.default_rng(0)
    same = np.tile([0.1, 0.2, 0.3, 0.4], (20, 1)) + 1e-9 * rng.random((20, 4))
    line = prediction_collapse(same)
    assert line.startswith("the model's output does not depend on the image") and "heatmaps carry no information" in line
    assert prediction_collapse(rng.dirichlet([1, 1, 1, 1], 20)) is None
    assert prediction_collapse(same[:1]) is None  # one image says nothing
    spread = np.array([[0.5, 0.5], [0.5 + 2 * COLLAPSE_STD, 0.5 - 2 * COLLAPSE_STD]])
    assert prediction_collapse(spread) is None


def test_report_pack_and_analyze_warn_about_a_collapsed_model(film_run, collapsed, tmp_path, capsys):
    from mammography.cli import main

    root, _, _ = film_run
    article = tmp_path / "Article"
    code = main(["report-pack", "--", "--run", str(collapsed), "--assets-dir", str(article / "assets"),
                 "--tex", str(article / "sections" / "density_model.tex"), "--markdown", str(article / "d.md"),
                 "--per-class", "1", "--device", "cpu", "--cache-dir", str(root / "cache"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "does not depend on the image" in out
    tex = (article / "sections" / "density_model.tex").read_text()
    assert "\\textbf{Warning:}" in tex and "heatmaps carry no information" in tex
    assert "does not depend on the image" in (article / "d.md").read_text()

    code = main(["analyze", "--run", str(collapsed), "--out", str(tmp_path / "analysis"), "--no-figures",
                 "--device", "cpu", "--cache-dir", str(root / "cache"), "--no-progress", "--no-marker-occlusion"])
    assert code == 0
    assert "does not depend on the image" in capsys.readouterr().out
    summary = json.loads(next((tmp_path / "analysis").rglob("attention_summary.json")).read_text())
    assert summary["collapse"] and "heatmaps carry no information" in summary["collapse"]
    per_image = pd.read_csv(next((tmp_path / "analysis").rglob("attention_per_image.csv")))
    assert {"laterality", "laterality_source", "view", "view_source", "film_edge_share"} <= set(per_image.columns)
    assert set(per_image["laterality_source"]) <= {"file name", "image"}


def test_explorer_warns_about_a_collapsed_model_and_shows_laterality_sources(film_run, collapsed, tmp_path):
    from mammography.web.data import build_explorer

    root, _, _ = film_run
    site = build_explorer([collapsed], tmp_path / "site", layers=["features.8"], device="cpu",
                          cache_dir=root / "cache", progress=False)
    text = (site.path / "data.js").read_text()
    data = json.loads(text[len("window.MAMMO_SITE = "):].rstrip().rstrip(";"))
    # the header's run line carries the warning, measured on the recomputed predictions
    assert "does not depend on the image" in data["seeds"][0]["note"]
    metas = []
    for rec in data["images"]:
        maps = (site.path / "maps" / f"{rec['k']}.js").read_text()
        metas.append(json.loads(maps[maps.index(",") + 1 :].rstrip().rstrip(";").rstrip(")"))["meta"])
    assert all(m["laterality"].split(" (")[1].rstrip(")") in ("file name", "image") for m in metas)
