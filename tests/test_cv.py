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
    # the t-interval 0.203 to 1.197 is clipped to accuracy's range and says so
    assert summary["metrics"]["acc"]["ci95_unclipped"] == pytest.approx([0.7 - half, 0.7 + half])
    assert summary["ci95"]["acc"] == pytest.approx([0.7 - half, 1.0])
    assert summary["metrics"]["acc"]["ci95_clipped"] and summary["metrics"]["acc"]["range"] == [0.0, 1.0]
    assert half == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    # a metric defined in one fold only: mean over that fold, no spread
    auc = summary["metrics"]["auc_ovr"]
    assert (auc["mean"], auc["std"], auc["ci95"], auc["n"]) == (0.8, None, [None, None], 1)
    json.dumps(summary, allow_nan=False)


def test_interval_inside_the_range_is_not_clipped_and_kappa_may_be_negative():
    summary = summarise_folds([{"kappa_quadratic": -0.2}, {"kappa_quadratic": -0.1}, {"kappa_quadratic": 0.0}])
    k = summary["metrics"]["kappa_quadratic"]
    assert not k["ci95_clipped"] and k["ci95"] == k["ci95_unclipped"] and k["ci95"][0] < -0.2
    assert k["range"] == [-1.0, 1.0]


def test_summary_lines_state_mean_sd_interval_and_clipping():
    from mammography.training.cv import summary_lines

    folds = [{"acc": 0.5, "auc_ovr": None}, {"acc": 0.7, "auc_ovr": 0.8}, {"acc": 0.9, "auc_ovr": None}]
    summary = {"k": 3, **summarise_folds(folds), "warnings": ["fold 2: the fold's model predicts class 1 for all 8 "
                                                               "validation images"]}
    lines = summary_lines(summary)
    acc = next(ln for ln in lines if ln.strip().startswith("acc "))
    assert "0.700 \u00b1 0.200" in acc and "[0.203, 1.000] *" in acc
    assert any("clipped to the metric's range: acc to [0, 1] (t-interval 0.203 to 1.197)" in ln for ln in lines)
    assert any("auc_ovr" in ln and "(1 of 3 folds define it)" in ln for ln in lines)
    assert lines[-1] == "warning: fold 2: the fold's model predicts class 1 for all 8 validation images"


def test_degenerate_predictions_are_named():
    from mammography.training.metrics import degenerate_warnings

    assert degenerate_warnings([1, 2, 3], [1, 2, 2]) == []
    one_class = degenerate_warnings([1, 2, 2, 3], [2, 2, 2, 2])
    assert len(one_class) == 1 and "predicts class 2 for all 4 validation images" in one_class[0]
    assert "(0.50)" in one_class[0]
    assert "are of class 3" in degenerate_warnings([3, 3], [3, 1])[0]


def test_cv_summary_json_feeds_the_printed_summary(cv_root):
    import json as _json

    from mammography.training.cv import summary_lines

    summary = _json.loads((cv_root / "cv_summary.json").read_text())
    assert "warnings" in summary and summary["ci_method"].endswith("clipped to the metric's range")
    lines = summary_lines(summary)
    assert lines[0].startswith(f"validation metrics over {K} folds: mean \u00b1 sd")
    assert all(any(ln.strip().startswith(name + " ") for ln in lines) for name in SCALAR_METRICS)
    # a fold whose model predicts one class for every image is named in the warnings
    for record in summary["folds"]:
        predictions = pd.read_csv(cv_root / record["run_dir"] / "val_predictions.csv")
        degenerate = predictions["y_pred"].nunique() == 1
        named = any(w.startswith(f"fold {record['fold']}: the model predicts class") for w in summary["warnings"])
        assert named == degenerate, record["fold"]
