"""Reading run directories: ours and both shapes of the earlier project's, single and CV.

All run directories are written here, in the formats of DESIGN section 2; one
real EfficientNet-B0 checkpoint is shared (hard-linked) between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.errors import CheckpointError, RunError
from mammography.models import build_density_model
from mammography.runs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CVRun,
    Run,
    is_cv_root,
    load_cv_run,
    load_run,
    normalise_metrics,
    resolve_runs,
)

CANONICAL = ["image_path", "y_true", "y_pred", "confidence", "p_A", "p_B", "p_C", "p_D"]
METRICS = {
    "acc": 0.5,
    "kappa_quadratic": 0.61,
    "macro_f1": 0.42,
    "auc_ovr": 0.77,
    "bal_acc": 0.55,
    "bal_acc_adj": 0.4,
    "confusion_matrix": [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
    "classification_report": {"1": {"precision": 1.0}},
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, dict]:
    """One saved density checkpoint (earlier-project form) and its state."""
    torch.manual_seed(11)
    state = build_density_model().state_dict()
    dup = dict(state)
    dup.update({"backbone." + k: v.clone() for k, v in state.items() if k.startswith("features.")})
    path = tmp_path_factory.mktemp("weights") / "best_model.pth"
    torch.save({"model_state_dict": dup, "epoch": 3}, path)
    return path, state


@pytest.fixture(scope="module")
def table() -> dict:
    """Ground truth of 6 validation rows: 1-based labels and probabilities whose argmax is y_pred."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=6)
    y_true = np.array([1, 2, 3, 4, 2, 3])
    return {
        "image_path": [f"/data/img_{i}.dcm" for i in range(6)],
        "accession": [f"ACC{i:03d}" for i in range(6)],
        "y_true": y_true,
        "y_pred": probs.argmax(axis=1) + 1,
        "probs": probs,
    }


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _predictions_ours(t: dict) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "image_path": t["image_path"],
            "accession": t["accession"],
            "patient_id": [f"P{i}" for i in range(6)],
            "view": ["CC", "MLO"] * 3,
            "laterality": ["L", "R"] * 3,
            "y_true": t["y_true"],
            "y_pred": t["y_pred"],
            "confidence": t["probs"].max(axis=1),
        }
    )
    for j, letter in enumerate("ABCD"):
        df[f"p_{letter}"] = t["probs"][:, j]
    return df


def _predictions_shape_a(t: dict, probs_format: str = "json") -> pd.DataFrame:
    """Earlier project shape (a): path, accession, raw_label, y_true, y_pred (0-based), probs."""
    if probs_format == "json":
        probs = [json.dumps([float(v) for v in row]) for row in t["probs"]]
    else:  # str(np.ndarray), as a numpy-minded script would write it
        probs = [np.array2string(row, precision=17, separator=" ", max_line_width=40) for row in t["probs"]]
    return pd.DataFrame(
        {
            "path": t["image_path"],
            "accession": t["accession"],
            "raw_label": ["ABCD"[v - 1] for v in t["y_true"]],
            "y_true": t["y_true"] - 1,
            "y_pred": t["y_pred"] - 1,
            "probs": probs,
        }
    )


def _predictions_shape_b(t: dict) -> pd.DataFrame:
    """Earlier project shape (b): the input columns, then 1-based y_true, y_pred, p_A..p_D."""
    df = pd.DataFrame(
        {
            "accession": t["accession"],
            "image_path": t["image_path"],
            "professional_label": t["y_true"],
            "y_true": t["y_true"],
            "y_pred": t["y_pred"],
        }
    )
    for j, letter in enumerate("ABCD"):
        df[f"p_{letter}"] = t["probs"][:, j]
    return df


def write_run(
    run_dir: Path,
    checkpoint: Path,
    predictions: pd.DataFrame,
    *,
    checkpoint_name: str = "best_model.pth",
    summary: dict | None = None,
    metrics: dict | None = None,
    metrics_name: str = "metrics/val_metrics.json",
) -> Path:
    """A run directory in the given format."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _link(checkpoint, run_dir / checkpoint_name)
    if summary is not None:
        _write_json(run_dir / "summary.json", summary)
    predictions.to_csv(run_dir / "val_predictions.csv", index=False)
    _write_json(run_dir / metrics_name, METRICS if metrics is None else metrics)
    (run_dir / "train_history.csv").write_text("epoch,loss\n1,1.2\n", encoding="utf-8")
    return run_dir


def _earlier_summary(seed=42, **extra) -> dict:
    return {"seed": seed, "arch": "efficientnet_b0", "img_size": 512, "mean": None, "std": None,
            "reproducibility": {"git_commit": "abc123"}, **extra}


# --------------------------------------------------------------------------- single runs


def test_our_run_format_loads(tmp_path, weights, table):
    summary = {"seed": 42, "arch": "efficientnet_b0", "img_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
               "classes": ["A", "B", "C", "D"], "preprocess": {"normalise_laterality": True}}
    run_dir = write_run(tmp_path / "results_4", weights[0], _predictions_ours(table), summary=summary)
    run = load_run(run_dir)
    assert isinstance(run, Run)
    assert run.run_id == "results_4" and run.seed == 42 and run.fold is None
    assert run.path == run_dir and run.checkpoint == run_dir / "best_model.pth"
    assert run.img_size == 64 and run.mean == (0.5, 0.5, 0.5) and run.std == (0.25, 0.25, 0.25)
    assert run.normalise_laterality is True
    assert list(run.predictions.columns[:8]) == CANONICAL
    assert list(run.predictions.columns[8:]) == ["accession", "patient_id", "view", "laterality"]
    assert run.predictions["y_true"].tolist() == table["y_true"].tolist()
    np.testing.assert_allclose(run.probabilities, table["probs"], rtol=1e-12)
    assert run.probabilities.shape == (6, 4)
    assert run.metrics == {k: METRICS[k] for k in ("acc", "kappa_quadratic", "macro_f1", "auc_ovr", "bal_acc", "bal_acc_adj")}
    assert run.metrics_raw["confusion_matrix"] == METRICS["confusion_matrix"]
    assert run.checkpoint_sha256 == hashlib.sha256(run.checkpoint.read_bytes()).hexdigest()


def test_load_model_returns_saved_weights_in_eval_mode(tmp_path, weights, table):
    path, state = weights
    run = load_run(write_run(tmp_path / "r", path, _predictions_ours(table), summary=_earlier_summary()))
    model = run.load_model("cpu")
    assert not model.training
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_fused_checkpoint_in_a_run_is_refused_on_load_model(tmp_path, weights, table):
    _, state = weights
    fused = dict(state, **{"classifier.1.weight": torch.zeros(4, 1280 + 64)})
    ckpt = tmp_path / "fused.pt"
    torch.save({"model_state": fused}, ckpt)
    run = load_run(write_run(tmp_path / "fused_run", ckpt, _predictions_ours(table), checkpoint_name="best_model.pt",
                             summary=_earlier_summary()))
    with pytest.raises(CheckpointError, match="fused"):
        run.load_model()


@pytest.mark.parametrize("probs_format", ["json", "numpy"])
def test_both_earlier_csv_shapes_give_identical_tables(tmp_path, weights, table, probs_format):
    run_a = load_run(write_run(tmp_path / "a", weights[0], _predictions_shape_a(table, probs_format),
                               checkpoint_name="best_model.pt", summary=_earlier_summary()))
    run_b = load_run(write_run(tmp_path / "b", weights[0], _predictions_shape_b(table), summary=_earlier_summary()))
    run_ours = load_run(write_run(tmp_path / "c", weights[0], _predictions_ours(table), summary=_earlier_summary()))
    a, b = run_a.predictions, run_b.predictions
    pd.testing.assert_frame_equal(a[CANONICAL + ["accession"]], b[CANONICAL + ["accession"]], rtol=1e-12)
    pd.testing.assert_frame_equal(a[CANONICAL], run_ours.predictions[CANONICAL], rtol=1e-12)
    assert a["y_true"].tolist() == table["y_true"].tolist()  # shape (a) was 0-based
    assert "raw_label" in a and "professional_label" in b and "probs" not in a
    np.testing.assert_allclose(run_a.probabilities, run_b.probabilities, rtol=1e-12)
    assert run_a.checkpoint.name == "best_model.pt"


def _ambiguous(y_true0, y_pred0, probs, **extra) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/x/{i}.png" for i in range(len(y_true0))], "y_true": y_true0, "y_pred": y_pred0,
                         "probs": [json.dumps(list(map(float, p))) for p in probs], **extra})


def test_label_base_detection_rules(tmp_path, weights):
    def load(name, df):
        return load_run(write_run(tmp_path / name, weights[0], df, summary=_earlier_summary())).predictions

    # only 1..3 appear: y_pred matches the argmax as 0-based columns -> 0-based
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    got = load("argmax0", _ambiguous([1, 2, 3], [1, 2, 3], probs))
    assert got["y_pred"].tolist() == [2, 3, 4] and got["y_true"].tolist() == [2, 3, 4]
    # same values, argmax matches as 1-based columns -> kept as 1-based
    probs1 = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]])
    df = _ambiguous([1, 2, 3], [1, 2, 3], probs1)
    assert load("argmax1", df)["y_pred"].tolist() == [1, 2, 3]
    # tied probabilities: the raw label column decides (letters, 1-based meaning)
    flat = np.full((3, 4), 0.25)
    assert load("raw0", _ambiguous([1, 2, 3], [1, 1, 1], flat, raw_label=["B", "C", "D"]))["y_true"].tolist() == [2, 3, 4]
    assert load("raw1", _ambiguous([1, 2, 3], [1, 1, 1], flat, raw_label=["1", "2", "3"]))["y_true"].tolist() == [1, 2, 3]
    # nothing decides: shape (a) ('probs' list) is the earlier project's 0-based shape
    assert load("shape", _ambiguous([1, 2, 3], [1, 1, 1], flat))["y_true"].tolist() == [2, 3, 4]
    # a 0 or a 4 settles it even against the shape
    assert load("zero", _ambiguous([0, 2], [0, 2], flat[:2]))["y_true"].tolist() == [1, 3]
    with pytest.raises(RunError, match="0..4"):
        load("both", _ambiguous([0, 4], [0, 4], flat[:2]))


def test_relative_image_paths_resolve_cwd_then_run_dir(tmp_path, weights, table, monkeypatch):
    workdir = tmp_path / "work"
    (workdir / "archive").mkdir(parents=True)
    (workdir / "archive" / "here.dcm").write_bytes(b"x")
    monkeypatch.chdir(workdir)
    df = _predictions_ours(table)
    df["image_path"] = ["archive/here.dcm", "images/in_run.png", "/abs/img.dcm", "archive/here.dcm",
                        "images/in_run.png", "/abs/img.dcm"]
    df["roi_path"] = ["rois/r0.png", "", None, "rois/r3.png", "", None]
    run_dir = write_run(tmp_path / "results", weights[0], df, summary=_earlier_summary())
    paths = load_run(run_dir).predictions
    assert paths["image_path"].tolist()[:3] == [str(workdir / "archive/here.dcm"), str(run_dir / "images/in_run.png"),
                                                "/abs/img.dcm"]
    assert paths["roi_path"].tolist()[:3] == [str(run_dir / "rois/r0.png"), None, None]


def test_metrics_normalisation():
    earlier = {"acc": 0.7, "kappa_quadratic": 0.8, "macro_f1": 0.6, "bal_acc": 0.625, "confusion_matrix": [[1]]}
    norm = normalise_metrics(earlier, np.array([1, 2, 3, 4, 2]))
    assert norm["auc_ovr"] is None  # absent
    assert norm["bal_acc_adj"] == pytest.approx((0.625 - 0.25) / 0.75)  # derived like scikit-learn
    assert norm["acc"] == 0.7 and set(norm) == {"acc", "kappa_quadratic", "macro_f1", "auc_ovr", "bal_acc", "bal_acc_adj"}
    nested = normalise_metrics({"val": {"accuracy": 0.9, "auc_ovr": float("nan"), "bal_acc_adj": 0.3}, "epoch": 3})
    assert nested["acc"] == 0.9 and nested["auc_ovr"] is None and nested["bal_acc_adj"] == 0.3
    assert normalise_metrics({})["acc"] is None


def test_summary_null_stats_and_seed_from_folder(tmp_path, weights, table):
    summary = {"arch": "efficientnet_b0", "img_size": 512, "mean": None, "std": None}
    run = load_run(write_run(tmp_path / "results_seed43", weights[0], _predictions_shape_b(table), summary=summary))
    assert run.mean == IMAGENET_MEAN and run.std == IMAGENET_STD
    assert run.seed == 43 and run.normalise_laterality is False
    bad = load_run  # img_size is required to preprocess like training did
    with pytest.raises(RunError, match=r"summary\.json has no usable img_size"):
        bad(write_run(tmp_path / "nosize", weights[0], _predictions_shape_b(table), summary={"seed": 1}))


@pytest.mark.parametrize(
    "remove, expected",
    [
        ("best_model.pth", r"best_model\.pth is missing.*best_model\.pt.*train-density --save-best"),
        ("val_predictions.csv", r"val_predictions\.csv is missing: a run directory needs it \(written by mammography train-density"),
        ("summary.json", r"summary\.json is missing.*train-density"),
        ("metrics/val_metrics.json", r"metrics/val_metrics\.json is missing.*metrics\.json.*train-density"),
    ],
)
def test_missing_files_are_named(tmp_path, weights, table, remove, expected):
    run_dir = write_run(tmp_path / "results_7", weights[0], _predictions_ours(table), summary=_earlier_summary())
    (run_dir / remove).unlink()
    with pytest.raises(RunError, match=expected):
        load_run(run_dir)


def test_malformed_predictions_are_errors(tmp_path, weights, table):
    df = _predictions_ours(table).drop(columns=["y_pred"])
    with pytest.raises(RunError, match=r"val_predictions\.csv lacks columns y_pred"):
        load_run(write_run(tmp_path / "r1", weights[0], df, summary=_earlier_summary()))
    df = _predictions_ours(table).drop(columns=["p_D"])
    with pytest.raises(RunError, match="no probabilities"):
        load_run(write_run(tmp_path / "r2", weights[0], df, summary=_earlier_summary()))
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nowhere")


# --------------------------------------------------------------------------- cross-validation


def test_cv_layout_folds_from_1_with_results_subdirs(tmp_path, weights, table):
    root = tmp_path / "results_k3_seed42"
    for fold in (1, 2, 3):
        write_run(root / f"fold_{fold}" / "results", weights[0], _predictions_shape_a(table),
                  checkpoint_name="best_model.pt", summary={"img_size": 512, "mean": None, "std": None},
                  metrics=dict(METRICS, acc=0.1 * fold))
    _write_json(root / "cv_summary.json", {"k": 3, "folds": [{"acc": 0.1}, {"acc": 0.2}, {"acc": 0.3}]})
    assert is_cv_root(root) and not is_cv_root(root / "fold_1" / "results")
    cv = load_cv_run(root)
    assert isinstance(cv, CVRun) and cv.k == 3 and cv.seed == 42 and cv.root == root
    assert [r.run_id for r in cv.folds] == ["results_k3_seed42/fold_1", "results_k3_seed42/fold_2", "results_k3_seed42/fold_3"]
    assert [r.fold for r in cv.folds] == [1, 2, 3] and [r.seed for r in cv.folds] == [42, 42, 42]
    assert [r.metrics["acc"] for r in cv.folds] == pytest.approx([0.1, 0.2, 0.3])
    assert cv.folds[0].path == root / "fold_1" / "results"
    assert cv.summary["k"] == 3
    # a single fold can be loaded on its own, by either path
    assert load_run(root / "fold_2").run_id == "results_k3_seed42/fold_2"
    assert load_run(root / "fold_2" / "results").fold == 2
    with pytest.raises(RunError, match="load_cv_run"):
        load_run(root)


def test_cv_newer_variant_folds_from_0_with_root_metrics(tmp_path, weights, table):
    root = tmp_path / "results_k2_seed43"
    _write_json(root / "summary.json", {"seed": 43, "img_size": 256, "mean": None, "std": None})
    for fold in (0, 1):
        write_run(root / f"fold_{fold}", weights[0], _predictions_shape_b(table), metrics_name="metrics.json",
                  metrics={"acc": 0.5 + fold / 10, "kappa_quadratic": 0.2})
    cv = load_cv_run(root)
    assert cv.k == 2 and cv.seed == 43 and cv.summary == {}
    assert [r.fold for r in cv.folds] == [0, 1] and [r.run_id for r in cv.folds] == ["results_k2_seed43/fold_0", "results_k2_seed43/fold_1"]
    assert cv.folds[1].metrics["acc"] == pytest.approx(0.6) and cv.folds[1].metrics["auc_ovr"] is None
    assert cv.folds[0].img_size == 256  # the folds share the root's summary.json


def test_cv_missing_fold_is_named(tmp_path, weights, table):
    root = tmp_path / "results_k3_seed44"
    for fold in (1, 3):
        write_run(root / f"fold_{fold}" / "results", weights[0], _predictions_shape_b(table), summary=_earlier_summary(44))
    with pytest.raises(RunError, match=r"results_k3_seed44/fold_2 is missing.*mammography cross-validate"):
        load_cv_run(root)
    with pytest.raises(RunError, match="no fold_N folders"):
        load_cv_run(tmp_path)


# --------------------------------------------------------------------------- resolve_runs


def test_resolve_runs_dir_outputs_relative_and_glob(tmp_path, monkeypatch):
    outputs = tmp_path / "outputs"
    base = outputs / "mammo_efficientnetb0_density"
    for name in ("results", "results_2", "results_10", "results_4"):
        (base / name).mkdir(parents=True)
    (base / "results_notes.txt").write_text("not a run")
    cv = outputs / "density_experiments" / "results_k3_seed42"
    cv.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert resolve_runs([base / "results_4"]) == [base / "results_4"]
    assert resolve_runs("results_4") == [base / "results_4"]  # relative to outputs/mammo_efficientnetb0_density
    assert resolve_runs(["results_k3_seed42"]) == [cv]  # ... or outputs/density_experiments
    assert resolve_runs(["outputs/mammo_efficientnetb0_density/results_*"]) == [
        base / "results_2", base / "results_4", base / "results_10"]  # natural order, dirs only
    assert resolve_runs(["results_*", "results_4"], outputs_root=outputs) == [
        base / "results_2", base / "results_4", base / "results_10"]  # glob inside outputs, no duplicates
    with pytest.raises(RunError, match=r"run 'results_99' not found.*mammo_efficientnetb0_density/results_99"):
        resolve_runs(["results_99"])
    with pytest.raises(RunError, match="not found"):
        resolve_runs(["nothing_*"])
