"""train-density: run directory contents, best-epoch selection, determinism, splits, metrics.

One small real training run (EfficientNet-B0 at 64 px, 24 phantom DICOM
images, 3 epochs) is shared by the file checks; the determinism check trains
it a second time through the CLI.
"""

import json
import math
import random
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

from mammography.cli import main as cli_main
from mammography.data.dataset import MammogramDataset
from mammography.data.splits import check_no_patient_overlap, kfold_patients, patient_classes, split_patients
from mammography.errors import ConfigError, ManifestError
from mammography.models import build_density_model
from mammography.synth import generate_dataset
from mammography.training.metrics import SCALAR_METRICS, compute_metrics
from mammography.training.reproducibility import collect_reproducibility, git_state, seeded
from mammography.training.rundir import HISTORY_COLUMNS, PREDICTION_COLUMNS, next_run_dir
from mammography.training.demo import train_demo_runs
from mammography.training.train import EpochResult, EpochSelector, TrainConfig, train_density

IMG = 64
EPOCHS = 3
METRIC_KEYS = {"acc", "kappa_quadratic", "macro_f1", "auc_ovr", "bal_acc", "bal_acc_adj", "confusion_matrix", "classification_report"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """24 phantom images (6 patients x 4 views), 128x104 px."""
    return generate_dataset(tmp_path_factory.mktemp("phantoms"), n=24, seed=0, size=(128, 104))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(manifest, cache_dir, tmp_path_factory):
    config = TrainConfig(
        csv=manifest,
        outdir=tmp_path_factory.mktemp("outputs"),
        seed=42,
        epochs=EPOCHS,
        batch_size=4,
        img_size=IMG,
        save_best=True,
        device="cpu",
        cache_dir=cache_dir,
        progress=False,
    )
    return train_density(config)


def read_json(path):
    return json.loads(path.read_text())


# -- the run directory ---------------------------------------------------------


def test_run_directory_has_every_file(run):
    assert run.name == "results"
    for name in ("best_model.pth", "summary.json", "val_predictions.csv", "metrics/val_metrics.json",
                 "train_history.csv", "train_history.png", "split.csv"):
        assert (run / name).is_file(), name
    assert (run / "train_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


def test_summary_keys_and_values(run, manifest):
    summary = read_json(run / "summary.json")
    assert summary["seed"] == 42
    assert summary["arch"] == "efficientnet_b0"
    assert summary["img_size"] == IMG
    assert summary["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert summary["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert summary["classes"] == ["1", "2", "3", "4"]
    assert (summary["epochs"], summary["batch_size"]) == (EPOCHS, 4)
    assert summary["lr"] > 0 and summary["weight_decay"] >= 0
    assert summary["best_metric_name"] == "bal_acc_adj"
    assert 1 <= summary["best_epoch"] <= EPOCHS
    assert summary["saved_epoch"] == summary["best_epoch"]  # --save-best
    assert summary["preprocess"]["normalise_laterality"] is True and summary["preprocess"]["version"]
    assert summary["manifest"] == str(manifest.resolve())
    assert summary["device"] == "cpu"
    created = pd.Timestamp(summary["created_at"])
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    repro = summary["reproducibility"]
    for key in ("git_commit", "git_dirty", "command_line", "python", "torch", "torchvision", "platform"):
        assert key in repro
    assert repro["torch"] == torch.__version__


def test_val_predictions_columns_and_labels(run):
    predictions = pd.read_csv(run / "val_predictions.csv")
    assert tuple(predictions.columns[: len(PREDICTION_COLUMNS)]) == PREDICTION_COLUMNS
    assert list(predictions.columns[len(PREDICTION_COLUMNS):]) == [
        "laterality_source", "view_source", "roi_path", "breast_mask_path"
    ]
    # the manifest names laterality and view, so that is where the flip's laterality came from
    assert set(predictions["laterality_source"]) == set(predictions["view_source"]) == {"manifest"}
    assert set(predictions["laterality"]) <= {"L", "R"} and set(predictions["view"]) <= {"CC", "MLO"}
    split = pd.read_csv(run / "split.csv")
    assert sorted(predictions["image_path"]) == sorted(split.loc[split["split"] == "val", "image_path"])
    assert predictions["y_true"].between(1, 4).all() and predictions["y_pred"].between(1, 4).all()
    probs = predictions[["p_A", "p_B", "p_C", "p_D"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predictions["y_pred"], probs.argmax(axis=1) + 1)
    np.testing.assert_allclose(predictions["confidence"], probs.max(axis=1))


def test_metrics_json_equals_metrics_recomputed_from_the_predictions(run):
    metrics = read_json(run / "metrics" / "val_metrics.json")
    assert METRIC_KEYS <= set(metrics)
    predictions = pd.read_csv(run / "val_predictions.csv")
    recomputed = compute_metrics(predictions["y_true"], predictions["y_pred"], predictions[["p_A", "p_B", "p_C", "p_D"]].to_numpy())
    for key in SCALAR_METRICS:
        assert metrics[key] == pytest.approx(recomputed[key], abs=1e-9), key
    assert metrics["confusion_matrix"] == recomputed["confusion_matrix"]
    assert np.array(metrics["confusion_matrix"]).shape == (4, 4)


def test_history_rows_and_best_epoch_is_the_one_written(run):
    history = pd.read_csv(run / "train_history.csv")
    assert tuple(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    summary = read_json(run / "summary.json")
    scores = history["bal_acc_adj"].fillna(-np.inf).to_numpy()
    assert summary["best_epoch"] == int(np.argmax(scores)) + 1  # argmax: first epoch on ties
    assert summary["best_metric"] == pytest.approx(scores.max())
    row = history.set_index("epoch").loc[summary["best_epoch"]]
    metrics = read_json(run / "metrics" / "val_metrics.json")
    for key in ("acc", "bal_acc_adj", "kappa_quadratic", "macro_f1"):
        assert row[key] == pytest.approx(metrics[key] if metrics[key] is not None else np.nan, nan_ok=True), key


def test_checkpoint_is_a_plain_state_dict_that_reproduces_the_predictions(run):
    """The weights written are the ones that made val_predictions.csv (same epoch)."""
    state = torch.load(run / "best_model.pth", weights_only=True, map_location="cpu")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = build_density_model()
    model.load_state_dict(state, strict=True)
    model.eval()
    predictions = pd.read_csv(run / "val_predictions.csv")
    dataset = MammogramDataset(predictions["image_path"], img_size=IMG)
    with torch.inference_mode():
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        probs = torch.softmax(model(images), dim=1).numpy()
    np.testing.assert_allclose(probs, predictions[["p_A", "p_B", "p_C", "p_D"]].to_numpy(), atol=1e-4)


def test_split_is_patient_level(run):
    split = pd.read_csv(run / "split.csv")
    assert list(split.columns) == ["image_path", "patient_id", "split"]
    train = set(split.loc[split["split"] == "train", "patient_id"])
    val = set(split.loc[split["split"] == "val", "patient_id"])
    assert train and val and not train & val


def test_same_seed_same_data_gives_identical_predictions_via_the_cli(run, manifest, cache_dir, capsys):
    """Second run: through the CLI, warm cache, same outdir (-> results_1)."""
    code = cli_main([
        "train-density", "--csv", str(manifest), "--outdir", str(run.parent), "--seed", "42", "--save-best",
        "--epochs", str(EPOCHS), "--batch-size", "4", "--img-size", str(IMG), "--device", "cpu",
        "--cache-dir", str(cache_dir), "--no-progress",
    ])
    assert code == 0
    second = run.parent / "results_1"
    assert str(second) in capsys.readouterr().out
    assert (second / "val_predictions.csv").read_bytes() == (run / "val_predictions.csv").read_bytes()
    assert (second / "split.csv").read_bytes() == (run / "split.csv").read_bytes()
    first_state = torch.load(run / "best_model.pth", weights_only=True)
    second_state = torch.load(second / "best_model.pth", weights_only=True)
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert cli_main(["train-density", "--csv", str(tmp_path / "none.csv"), "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.csv" in err[0]
    assert cli_main(["train-density", "--csv", str(tmp_path / "none.csv"), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_demo_runs_one_per_seed_on_the_manifest_split(manifest, cache_dir, tmp_path):
    runs = train_demo_runs(manifest, tmp_path, seeds=(43, 44), img_size=IMG, epochs=1, batch_size=4,
                           device="cpu", cache_dir=cache_dir, progress=False)
    assert [r.name for r in runs] == ["results", "results_1"]
    assert [read_json(r / "summary.json")["seed"] for r in runs] == [43, 44]
    table = pd.read_csv(manifest)
    expected = sorted(str((manifest.parent / p).resolve()) for p in table.loc[table["split"] == "val", "image_path"])
    for r in runs:  # every seed validates on the manifest's val images: comparable across seeds
        assert sorted(pd.read_csv(r / "val_predictions.csv")["image_path"]) == expected
        assert read_json(r / "summary.json")["save_best"] is True


# -- which epoch is written ------------------------------------------------------


def offer_all(selector, scores):
    for epoch, score in enumerate(scores, 1):
        metrics = {"bal_acc_adj": score}
        selector.offer(epoch, metrics, lambda e=epoch, m=metrics: EpochResult(e, m, pd.DataFrame(), {}))
    return selector


def test_save_best_keeps_best_epoch_and_earlier_on_ties():
    selector = offer_all(EpochSelector(save_best=True, epochs=5), [0.1, 0.5, 0.3, 0.5, None])
    assert (selector.best_epoch, selector.saved.epoch) == (2, 2)
    selector = offer_all(EpochSelector(save_best=True, epochs=2), [None, None])
    assert selector.saved.epoch == 1


def test_without_save_best_the_last_epoch_is_written_and_best_still_reported():
    selector = offer_all(EpochSelector(save_best=False, epochs=4), [0.1, 0.7, 0.3, 0.2])
    assert (selector.best_epoch, selector.saved.epoch) == (2, 4)


# -- run folder names --------------------------------------------------------------


def test_next_free_run_name(tmp_path):
    assert next_run_dir(tmp_path).name == "results"
    assert next_run_dir(tmp_path).name == "results_1"
    (tmp_path / "results_7").mkdir()
    (tmp_path / "results_old").mkdir()  # not a run number: ignored
    assert next_run_dir(tmp_path).name == "results_8"
    assert next_run_dir(tmp_path, base="results_k3_seed42").name == "results_k3_seed42"
    assert next_run_dir(tmp_path, base="results_k3_seed42").name == "results_k3_seed42_1"


# -- splits ------------------------------------------------------------------------


def synthetic_manifest(n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice([1, 2, 3, 4], size=n_patients, p=[0.1, 0.4, 0.4, 0.1])
    rows = [
        {"image_path": f"/data/{p}_{v}.dcm", "patient_id": f"P{p:03d}", "density_label": int(labels[p])}
        for p in range(n_patients)
        for v in range(int(rng.integers(1, 5)))
    ]
    return pd.DataFrame(rows)


def test_split_patients_is_stratified_disjoint_and_seeded():
    df = synthetic_manifest()
    split = split_patients(df, val_frac=0.25, seed=42)
    check_no_patient_overlap(df, split)
    classes = patient_classes(df)
    val_patients = set(df.loc[split == "val", "patient_id"])
    for label, n in classes.value_counts().items():
        in_val = sum(classes[p] == label for p in val_patients)
        assert in_val == min(max(round(n * 0.25), 1), n - 1) if n >= 2 else in_val == 0
    assert split.equals(split_patients(df, val_frac=0.25, seed=42))
    assert not split.equals(split_patients(df, val_frac=0.25, seed=7))
    shuffled = df.sample(frac=1, random_state=1)
    assert split_patients(shuffled, 0.25, 42).sort_index().equals(split)


def test_rows_without_patient_id_are_their_own_patient():
    df = pd.DataFrame({"image_path": ["/a", "/b", "/c", "/d"], "patient_id": ["", None, "P1", "P1"], "density_label": [2, 2, 3, 3]})
    assert patient_classes(df).to_dict() == {"image:/a": 2, "image:/b": 2, "P1": 3}


def test_kfold_patients_covers_every_row_once_by_patient():
    df = synthetic_manifest()
    folds = kfold_patients(df, k=4, seed=42)
    assert sorted(folds.unique()) == [1, 2, 3, 4]
    check_no_patient_overlap(df, folds)
    with pytest.raises(ConfigError):
        kfold_patients(df, k=1)
    with pytest.raises(ManifestError):
        kfold_patients(df.head(2), k=3)


# -- metrics -----------------------------------------------------------------------


def test_metrics_match_sklearn_and_handle_absent_classes():
    y_true = np.array([2, 2, 3, 3, 3, 2])
    y_pred = np.array([2, 3, 3, 3, 2, 2])
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.1, 0.3, 0.5, 0.1], [0.0, 0.2, 0.7, 0.1],
                      [0.1, 0.1, 0.7, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.5, 0.2, 0.1]])
    m = compute_metrics(y_true, y_pred, probs)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["bal_acc_adj"] == pytest.approx(balanced_accuracy_score(y_true, y_pred, adjusted=True))
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    # classes 1 and 4 are absent: AUC over the present classes 2 and 3 (one-vs-rest)
    auc_2 = 7.5 / 9  # p_B of rows 0,1,5 vs rows 2,3,4: 7 of 9 pairs right, one tie (0.5, 0.5)
    auc_3 = 8 / 9  # p_C of rows 2,3,4 vs rows 0,1,5: 8 of 9 pairs right
    assert m["auc_ovr"] == pytest.approx((auc_2 + auc_3) / 2)
    assert m["confusion_matrix"][1] == [0, 2, 1, 0] and len(m["confusion_matrix"]) == 4
    assert set(m["classification_report"]) >= {"1", "2", "3", "4", "macro avg"}
    json.dumps(m, allow_nan=False)


def test_undefined_metrics_are_none_not_nan():
    m = compute_metrics([2, 2], [2, 2], np.full((2, 4), 0.25))
    assert m["auc_ovr"] is None and m["kappa_quadratic"] is None and m["bal_acc_adj"] is None
    assert m["acc"] == 1.0
    json.dumps(m, allow_nan=False)


# -- reproducibility ---------------------------------------------------------------


def test_git_state_in_and_outside_a_repository(tmp_path):
    assert git_state(tmp_path) == (None, None)
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "f.txt").write_text("b")
    assert git_state(tmp_path) == (commit, True)
    assert collect_reproducibility(["mammography", "train-density"])["command_line"] == "mammography train-density"


def test_seeded_restores_global_random_state():
    torch.manual_seed(1)
    random.seed(1)
    expected = (torch.rand(1), random.random())
    torch.manual_seed(1)
    random.seed(1)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with seeded(123):
        inside = torch.rand(1)
    with seeded(123):
        assert torch.equal(torch.rand(1), inside)
    assert torch.are_deterministic_algorithms_enabled() == was_deterministic
    assert (torch.rand(1), random.random()) == expected
    assert math.isfinite(float(inside))
