"""cross-validate: K patient-level folds, each a complete run directory, and cv_summary.json."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mammography.cli import main as cli_main
from mammography.synth import generate_dataset
from mammography.training.cv import summarise_folds
from mammography.training.metrics import SCALAR_METRICS

K = 2
RUN_FILES = ("best_model.pth", "summary.json", "val_predictions.csv", "metrics/val_metrics.json",
             "train_history.csv", "train_history.png", "split.csv")


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory):
    data = tmp_path_factory.mktemp("phantoms")
    manifest = generate_dataset(data, n=24, seed=1, size=(128, 104))
    outdir = tmp_path_factory.mktemp("experiments")
    code = cli_main([
        "cross-validate", "--folds", str(K), "--seed", "42", "--csv", str(manifest), "--outdir", str(outdir),
        "--epochs", "1", "--batch-size", "4", "--img-size", "64", "--device", "cpu", "--save-best",
        "--cache-dir", str(tmp_path_factory.mktemp("cache")), "--no-progress",
    ])
    assert code == 0
    return outdir / f"results_k{K}_seed42"


def test_every_fold_is_a_complete_run_directory(cv_root):
    for fold in range(1, K + 1):
        run = cv_root / f"fold_{fold}" / "results"
        for name in RUN_FILES:
            assert (run / name).is_file(), f"fold {fold}: {name}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["fold"] == fold and summary["folds"] == K and summary["seed"] == 42


def test_folds_hold_out_disjoint_patients_covering_all_images(cv_root):
    cv_split = pd.read_csv(cv_root / "cv_split.csv")
    held_out = []
    for fold in range(1, K + 1):
        split = pd.read_csv(cv_root / f"fold_{fold}" / "results" / "split.csv")
        val = split.loc[split["split"] == "val"]
        train = split.loc[split["split"] == "train"]
        assert not set(val["patient_id"]) & set(train["patient_id"])
        assert sorted(val["image_path"]) == sorted(cv_split.loc[cv_split["fold"] == fold, "image_path"])
        predictions = pd.read_csv(cv_root / f"fold_{fold}" / "results" / "val_predictions.csv")
        assert sorted(predictions["image_path"]) == sorted(val["image_path"])
        held_out.extend(val["image_path"])
    assert sorted(held_out) == sorted(cv_split["image_path"])  # every image validated exactly once


def test_cv_summary_has_per_fold_metrics_mean_std_and_ci(cv_root):
    summary = json.loads((cv_root / "cv_summary.json").read_text())
    assert summary["k"] == K and summary["seed"] == 42
    assert [f["fold"] for f in summary["folds"]] == list(range(1, K + 1))
    for name in SCALAR_METRICS:
        per_fold = []
        for record in summary["folds"]:
            metrics = json.loads((cv_root / record["run_dir"] / "metrics" / "val_metrics.json").read_text())
            assert record["metrics"][name] == metrics[name]
            per_fold.append(metrics[name])
        defined = [v for v in per_fold if v is not None]
        assert summary["metrics"][name]["n"] == len(defined)
        for key in ("mean", "std", "ci95"):
            assert name in summary[key]
        if len(defined) >= 2:
            assert summary["mean"][name] == pytest.approx(np.mean(defined))
            assert summary["std"][name] == pytest.approx(np.std(defined, ddof=1))


def test_summarise_folds_uses_ddof_1_and_student_t():
    folds = [{"acc": 0.5, "auc_ovr": None}, {"acc": 0.7, "auc_ovr": 0.8}, {"acc": 0.9, "auc_ovr": None}]
    summary = summarise_folds(folds)
    half = stats.t.ppf(0.975, df=2) * 0.2 / math.sqrt(3)
    assert summary["mean"]["acc"] == pytest.approx(0.7)
    assert summary["std"]["acc"] == pytest.approx(0.2)
    assert summary["ci95"]["acc"] == pytest.approx([0.7 - half, 0.7 + half])
    assert half == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    # a metric defined in one fold only: mean over that fold, no spread
    assert summary["metrics"]["auc_ovr"] == {"mean": 0.8, "std": None, "ci95": [None, None], "n": 1}
    json.dumps(summary, allow_nan=False)
