"""``mammography explain``: CAMs for every validation image of a run, stored and read back.

Real phantom DICOMs (``mammography.synth``) and a real run folder holding an
(untrained, seeded) EfficientNet-B0 at 64 px, written the way the earlier
project wrote runs.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.cam import GradCAM, create_cam
from mammography.cam.explain import explain_run, explain_runs, load_explanations, parse_target
from mammography.cli import main
from mammography.data.dataset import MammogramDataset
from mammography.errors import ConfigError, RunError
from mammography.models import build_density_model
from mammography.runs import load_run

IMG_SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> pd.DataFrame:
    from mammography.synth.dataset import generate_dataset

    root = tmp_path_factory.mktemp("phantoms")
    manifest = generate_dataset(root, n=8, seed=5, size=(160, 128), class_mix=(0.25, 0.25, 0.25, 0.25))
    table = pd.read_csv(manifest)
    return table.assign(image_path=[str(root / p) for p in table["image_path"]])


def calibrated_model(paths, seed: int) -> torch.nn.Module:
    """EfficientNet-B0 whose BatchNorm statistics come from the phantom images
    themselves (a random init gives maps of ~1e-14, useless for comparisons)."""
    torch.manual_seed(seed)
    model = build_density_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ds = MammogramDataset(paths, img_size=IMG_SIZE)
    model.train()
    with torch.no_grad():
        model(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    return model.eval()


def write_run(folder, rows: pd.DataFrame, seed: int = 42):
    """A run directory in the earlier project's layout (shape (b) predictions)."""
    folder.mkdir(parents=True)
    torch.save(calibrated_model(list(rows["image_path"]), seed).state_dict(), folder / "best_model.pth")
    (folder / "summary.json").write_text(json.dumps({
        "seed": seed, "arch": "efficientnet_b0", "img_size": IMG_SIZE, "mean": None, "std": None,
        "preprocess": {"normalise_laterality": True},
    }))
    table = rows[["image_path", "accession", "patient_id", "view", "laterality"]].copy()
    table.insert(1, "y_true", rows["density_label"].to_numpy())
    table.insert(2, "y_pred", rows["density_label"].to_numpy())
    for letter in "ABCD":
        table[f"p_{letter}"] = 0.25
    table.to_csv(folder / "val_predictions.csv", index=False)
    (folder / "metrics").mkdir()
    (folder / "metrics" / "val_metrics.json").write_text(json.dumps({"acc": 0.25}))
    return folder


@pytest.fixture(scope="module")
def run_dir(phantoms, tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "results_42", phantoms)


def run_images(run):
    ds = MammogramDataset(list(run.predictions["image_path"]), img_size=run.img_size,
                          normalise_laterality=run.normalise_laterality, mean=run.mean, std=run.std)
    return ds, torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_explain_run_stores_what_the_engine_computes(run_dir, tmp_path):
    run = load_run(run_dir)
    out = explain_run(run, ["features.6", "features.8"], "hirescam", tmp_path, batch_size=3, progress=False)
    assert out.n_images == len(run.predictions) == 8
    assert out.layers == ("features.6", "features.8") and out.method == "hirescam"
    assert out.record_path == tmp_path / "cam_hirescam" and (out.record_path / "record.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam_hirescam", "cam_hirescam_predictions.csv"]

    ex = load_explanations(out.record_path)
    assert ex.layers == out.layers and len(ex) == 8
    assert ex.image_paths == [str(p) for p in run.predictions["image_path"]]
    np.testing.assert_array_equal(ex.y_true, run.predictions["y_true"].to_numpy())
    assert ex.run_id == "results_42" and ex.checkpoint_sha256 == run.checkpoint_sha256
    assert ex.img_size == IMG_SIZE and ex.target_mode == "predicted"

    # the same maps as one direct call on all images (batching changes nothing)
    ds, images = run_images(run)
    direct = create_cam("hirescam", run.load_model(), ["features.6", "features.8"])(images)
    for layer in out.layers:
        assert ex.maps[layer].dtype == np.float32 and ex.maps[layer].shape == (8, 2, 2)
        ref = direct[layer].numpy()
        assert ref.max() > 1e-6  # a calibrated model: maps far from zero
        np.testing.assert_allclose(ex.maps[layer], ref, rtol=1e-4, atol=1e-5 * ref.max())
    np.testing.assert_allclose(ex.probs, direct.probs.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ex.targets, direct.targets.numpy())
    assert [g for g in ex.geometries] == [ds.geometry(i) for i in range(8)]

    # the stored maps keep working with the result helpers
    back = ex.result([0, 1]).normalise().to_original(ex.geometries[:2])
    assert back[0].shape == ex.geometries[0].original_shape

    table = pd.read_csv(out.csv_path)
    assert len(table) == 8
    assert list(table.columns[:9]) == ["image_path", "y_true", "y_pred", "confidence", "p_A", "p_B", "p_C", "p_D",
                                       "cam_target"]
    np.testing.assert_array_equal(table["y_pred"], direct.predictions.numpy() + 1)
    np.testing.assert_array_equal(table["cam_target"], direct.targets.numpy() + 1)
    # the shared rule: a probability off by more than 0.05, or the stored class beaten by more than 0.05
    probs = direct.probs.numpy().astype(np.float64)
    stored_pred = run.predictions["y_pred"].to_numpy()
    beaten = probs.max(1) - probs[np.arange(8), stored_pred - 1]
    differs = (np.abs(probs - run.probabilities).max(1) > 0.05) | ((probs.argmax(1) + 1 != stored_pred) & (beaten > 0.05))
    assert differs.any() and not differs.all()
    np.testing.assert_array_equal(table["agrees_with_run"], ~differs)
    assert out.n_agree == int((~differs).sum())
    # the stored prediction stands beside the recomputed one only where they differ
    np.testing.assert_array_equal(table["stored_y_pred"].notna(), differs)
    np.testing.assert_array_equal(table.loc[differs, "stored_y_pred"], stored_pred[differs])


def test_explain_true_and_all_targets(run_dir, tmp_path):
    run = load_run(run_dir)
    true = explain_run(run, "features.8", "gradcam", tmp_path / "t", targets="true", progress=False)
    ex = load_explanations(true.record_path)
    np.testing.assert_array_equal(ex.targets, run.predictions["y_true"].to_numpy() - 1)
    assert ex.target_mode == "true"

    every = explain_run(run, "features.8", "gradcam", tmp_path / "a", targets="all", batch_size=5, progress=False)
    ea = load_explanations(every.record_path)
    assert ea.maps["features.8"].shape == (8, 4, 2, 2)
    _, images = run_images(run)
    direct = GradCAM(run.load_model())(images, targets="all")
    ref = direct["features.8"].numpy()
    np.testing.assert_allclose(ea.maps["features.8"], ref, rtol=1e-4, atol=1e-5 * ref.max())
    # the true-class maps are the all-classes maps picked at the label
    picked = ea.maps["features.8"][np.arange(8), ex.targets]
    np.testing.assert_allclose(ex.maps["features.8"], picked, rtol=1e-4, atol=1e-5 * ref.max())
    assert "cam_target" not in pd.read_csv(every.csv_path).columns


def test_cli_explain_writes_per_run_folders(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is outputs/explanations under the working directory
    code = main(["explain", "--", "--run", str(run_dir), "--layers", "features.4,features.8", "--method",
                 "gradcam++", "--target", "B", "--no-cache", "--no-progress"])
    assert code == 0
    folder = tmp_path / "outputs" / "explanations" / "results_42"
    record = folder / "cam_gradcampp"
    assert (record / "record.json").is_file() and (folder / "cam_gradcampp_predictions.csv").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == ["best_model.pth", "metrics", "summary.json",
                                                         "val_predictions.csv"]  # the run is not written
    assert "wrote outputs/explanations/results_42/cam_gradcampp/ (sweep record)" in capsys.readouterr().out
    ex = load_explanations(record)
    assert ex.layers == ("features.4", "features.8") and ex.method == "gradcam++"
    assert (ex.targets == 1).all()


def test_explain_errors(run_dir, tmp_path, capsys):
    assert main(["explain", "--run", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["explain", "--run", str(run_dir), "--method", "scorecam", "--no-progress"]) == 2
    assert "scorecam" in capsys.readouterr().err
    assert main(["explain", "--run", str(run_dir), "--target", "E", "--no-progress"]) == 2
    with pytest.raises(ConfigError):
        explain_runs([run_dir], "features.99", out_dir=tmp_path, progress=False)
    with pytest.raises(RunError, match="no complete sweep record"):
        load_explanations(tmp_path / "missing")
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "record.json").write_text('{"format": "something else"}')
    with pytest.raises(RunError, match="not a sweep record"):
        load_explanations(bad)
    assert parse_target("a") == 0 and parse_target("4") == 3 and parse_target("ALL") == "all"


def test_a_second_command_reuses_explains_record(run_dir, tmp_path, capsys):
    """explain stores its sweep in the cache; a second explain writes the same bytes from it, and analyze
    reads it (shown by a record tampered with in the cache: analyze reports what the record says)."""
    cache = tmp_path / "cache"
    common = ["--run", str(run_dir), "--cache-dir", str(cache), "--device", "cpu", "--no-progress"]
    assert main(["explain", *common, "--out", str(tmp_path / "a")]) == 0
    (record,) = sorted((cache / "records").rglob("record.json"))
    assert json.loads(record.read_text())["provenance"]["layers"] == ["features.4", "features.6", "features.8"]
    assert main(["explain", *common, "--out", str(tmp_path / "b"), "--num-workers", "0"]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a and files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                                         if p.is_file())
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    table = pd.read_parquet(record.parent / "images.parquet")
    target = 0 if table.loc[0, "y_pred"] != 1 else 1  # a class the model did not predict for image 0
    for k, letter in enumerate("ABCD"):
        table.loc[0, f"p_{letter}"] = 1.0 if k == target else 0.0
    table.to_parquet(record.parent / "images.parquet", index=False)
    capsys.readouterr()
    assert main(["analyze", *common, "--out", str(tmp_path / "analysis"), "--no-figures"]) == 0
    per_image = pd.read_csv(tmp_path / "analysis" / "42" / "attention_per_image.csv").set_index("image_path")
    first = str(table.loc[0, "image_path"])
    assert per_image.loc[first, "y_pred"] == target + 1 and per_image.loc[first, "confidence"] == 1.0
    # a command asking for another method computes its own maps
    assert main(["explain", *common, "--out", str(tmp_path / "c"), "--method", "hirescam"]) == 0
    assert len(sorted((cache / "records").rglob("record.json"))) == 2
