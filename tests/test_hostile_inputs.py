"""The security audit's hostile and broken inputs, kept as a regression suite.

Every case must end in one line (exit status 2 from the CLI, a
MammographyError from the library), before any expensive work where the
input allows it, and nothing from a file may ever run: the code-running
payloads create a marker file if they do.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import _hostile as hostile
from mammography.cli import main
from mammography.errors import CheckpointError, ImageReadError, ManifestError, MammographyError, RunError
from mammography.io import read_mammogram
from mammography.models.checkpoint import MAX_TENSOR_BYTES, MODEL_STATE_BYTES, load_checkpoint_state
from mammography.models.density import build_density_model
from mammography.runs import load_run


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def refused(call, error=MammographyError, *phrases) -> str:
    with pytest.raises(error) as info:
        call()
    text = one_line(info.value)
    for phrase in phrases:
        assert phrase in text, text
    return text


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    marker = folder / "PWNED"
    return folder, marker, hostile.code_checkpoints(folder / "code", marker)


def test_no_crafted_checkpoint_runs_code_and_every_refusal_says_so(crafted):
    folder, marker, cases = crafted
    assert len(cases) >= 45
    for name, path in cases.items():
        text = refused(lambda: load_checkpoint_state(path), CheckpointError, "asks to run code", "refusing")
        assert "weights_only" not in text, name  # never the advice to unpickle a stranger's file
    assert not marker.exists()


def test_refusal_names_what_the_file_references(crafted):
    _, _, cases = crafted
    text = refused(lambda: load_checkpoint_state(cases["os.system-p4-zip.pth"]), CheckpointError)
    assert "posix.system" in text
    text = refused(lambda: load_checkpoint_state(cases["nn.Module-p2-legacy.pth"]), CheckpointError)
    assert "torch.nn.modules.linear.Linear" in text


def test_harmless_checkpoints_of_every_protocol_load(tmp_path):
    cases = hostile.harmless_checkpoints(tmp_path)
    for name, path in cases.items():
        state = load_checkpoint_state(path)
        assert list(state) == ["features.0.0.weight"], name


def test_cross_validation_fold_checkpoint_with_a_pathlib_config_loads(tmp_path):
    """The earlier project's CV folds save config=model_dump(), whose Path fields pickle pathlib paths."""
    import pathlib

    from mammography.models.checkpoint import load_density_checkpoint

    model = build_density_model()
    path = tmp_path / "fold_1_best.pt"
    torch.save({"epoch": 4, "model_state": model.state_dict(), "optimizer": {"lr": 1e-3},
                "config": {"csv": pathlib.PosixPath("/data/train.csv"), "outdir": pathlib.PosixPath("out"),
                           "dicom_root": None, "seed": 42}}, path)
    loaded = load_density_checkpoint(path)
    assert torch.equal(loaded.state_dict()["classifier.1.weight"], model.state_dict()["classifier.1.weight"])


def test_model_state_bytes_matches_the_model():
    state = build_density_model().state_dict()
    assert MODEL_STATE_BYTES == sum(v.numel() * v.element_size() for v in state.values())


@pytest.mark.parametrize("case", ["zip bomb", "pickle bomb", "legacy claim"])
def test_inflating_checkpoints_are_refused_before_allocation(tmp_path, case):
    """Small files that unpack to more than MAX_TENSOR_BYTES (bench/bench_hostile_inputs.py measures memory)."""
    path = {
        "zip bomb": lambda: hostile.zip_bomb_checkpoint(tmp_path / "bomb.pth", MAX_TENSOR_BYTES + (40 << 20)),
        "pickle bomb": lambda: hostile.pickle_bomb_checkpoint(tmp_path / "pbomb.pth", 64 << 20),
        "legacy claim": lambda: hostile.legacy_claim_checkpoint(tmp_path / "claim.pth", 1_500_000_000),
    }[case]()
    assert path.stat().st_size < 2_000_000
    refused(lambda: load_checkpoint_state(path), CheckpointError, "MB")


def test_weights_no_trained_model_has_are_refused(tmp_path):
    expected = {"nan": "NaN or infinite", "inf": "NaN or infinite", "sparse": "sparse", "meta": "meta tensor",
                "quantized": "quantized", "complex": "complex"}
    for name, path in hostile.odd_weight_checkpoints(tmp_path).items():
        refused(lambda: load_checkpoint_state(path), CheckpointError, expected[name])


def test_damaged_checkpoints_are_one_line(tmp_path):
    for name, path in hostile.broken_checkpoints(tmp_path).items():
        text = refused(lambda: load_checkpoint_state(path), CheckpointError, "not a readable PyTorch checkpoint")
        assert "weights_only" not in text, name


def test_key_names_are_printed_with_control_characters_escaped(tmp_path):
    from mammography.models.checkpoint import load_state_into

    state = build_density_model().state_dict()
    state["\x1b[2J\x1b[31mevil\nkey"] = torch.zeros(1)
    path = tmp_path / "names.pth"
    torch.save(state, path)
    text = refused(lambda: load_state_into(build_density_model(), load_checkpoint_state(path), path),
                   CheckpointError, "unexpected keys")
    assert "\x1b" not in text and "\\x1b[31mevil\\nkey" in text


@pytest.mark.parametrize("kind", hostile.NON_REGULAR)
def test_checkpoint_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, kind):
    path = hostile.non_regular(tmp_path / "best_model.pth", kind)
    refused(lambda: load_checkpoint_state(path), CheckpointError)


# --------------------------------------------------------------------------- DICOM


def _stored(shape=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 4000).astype(np.uint16)


def test_every_one_byte_change_in_a_dicom_header_is_read_or_refused_in_one_line(tmp_path):
    base = hostile.mammogram_dicom(tmp_path / "base.dcm", _stored(), WindowCenter="2000", WindowWidth="3000",
                                   RescaleSlope="1", RescaleIntercept="0", ImageLaterality="L",
                                   ViewPosition="CC", PixelSpacing=[0.1, 0.1])
    data = base.read_bytes()
    header_end = data.find(b"\xe0\x7f\x10\x00") + 12
    read = refused_count = 0
    mutated = tmp_path / "m.dcm"
    for i in range(128, header_end):
        mutated.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        try:
            read_mammogram(mutated)
            read += 1
        except ImageReadError as exc:
            one_line(exc)
            refused_count += 1
    assert read + refused_count == header_end - 128 and refused_count > 50


def test_corrupt_value_representation_is_one_line(tmp_path):
    """The audit's case: one byte of the Rows element's VR changed, pydicom raised NotImplementedError."""
    path = hostile.mammogram_dicom(tmp_path / "vr.dcm", _stored())
    data = path.read_bytes()
    at = data.find(b"\x28\x00\x10\x00US")
    path.write_bytes(data[: at + 4] + b"UX" + data[at + 6:])
    refused(lambda: read_mammogram(path), ImageReadError, "vr.dcm")


@pytest.mark.parametrize("keyword, value", [("RescaleSlope", "NaN"), ("RescaleIntercept", "inf"),
                                            ("WindowCenter", "nan"), ("WindowWidth", "Infinity")])
def test_non_finite_rescale_and_window_values_are_refused(tmp_path, keyword, value):
    elements = {"WindowCenter": "2000", "WindowWidth": "3000", keyword: value}
    path = hostile.mammogram_dicom(tmp_path / "nan.dcm", _stored(), **elements)
    refused(lambda: read_mammogram(path), ImageReadError, keyword, "not a finite number")


def test_dicom_sizes_are_checked_against_the_header_before_decoding(tmp_path):
    lying = hostile.lying_rle_dicom(tmp_path / "lying.dcm", 7000, 7000)  # 64 x 64 of data declared 49 MP
    refused(lambda: read_mammogram(lying), ImageReadError, "cannot decode to the 7000 x 7000 image")
    over_cap = hostile.lying_rle_dicom(tmp_path / "over.dcm", 8000, 8000)
    refused(lambda: read_mammogram(over_cap), ImageReadError, "implausible image size")
    import pydicom

    wide = hostile.mammogram_dicom(tmp_path / "bits.dcm", _stored())
    ds = pydicom.dcmread(wide)
    ds.BitsAllocated = 64
    ds.save_as(wide, enforce_file_format=True)
    refused(lambda: read_mammogram(wide), ImageReadError, "BitsAllocated")


@pytest.mark.parametrize("kind", hostile.NON_REGULAR)
def test_image_that_is_not_a_regular_file_is_refused_before_hashing(tmp_path, kind):
    from mammography.data.dataset import MammogramDataset

    path = hostile.non_regular(tmp_path / "image.dcm", kind)
    refused(lambda: read_mammogram(path), ImageReadError)
    dataset = MammogramDataset([path], img_size=64, cache_dir=tmp_path / "cache")  # the cache hashes first
    refused(lambda: dataset[0], ImageReadError)


# --------------------------------------------------------------------------- run files


def test_valid_hand_made_run_loads(tmp_path):
    assert load_run(hostile.run_dir(tmp_path)).img_size == 64


@pytest.mark.parametrize("name", hostile.ABSURD_SUMMARIES)
def test_absurd_summary_values_are_refused(tmp_path, name):
    summary, phrase = hostile.ABSURD_SUMMARIES[name]
    run = hostile.run_dir(tmp_path, summary)  # Python writes NaN and Infinity literals
    refused(lambda: load_run(run), RunError, phrase)


@pytest.mark.parametrize("kind", hostile.HOSTILE_SUMMARY_KINDS)
def test_hostile_summary_json_is_one_line(tmp_path, kind):
    run = hostile.run_dir(tmp_path)
    hostile.hostile_summary(run, kind)
    refused(lambda: load_run(run), RunError, "summary.json")


@pytest.mark.parametrize("kind", hostile.HOSTILE_PREDICTION_KINDS)
def test_hostile_predictions_are_one_line(tmp_path, kind):
    run = hostile.run_dir(tmp_path)
    hostile.hostile_predictions(run, kind)
    refused(lambda: load_run(run), RunError, "val_predictions.csv")


def test_hostile_manifests_are_one_line(tmp_path):
    from mammography.data import load_manifest

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    refused(lambda: load_manifest(fifo), ManifestError, "named pipe")
    nul = tmp_path / "nul.csv"
    nul.write_text("image_path,density_label\nimg\x00.dcm,2\n")
    refused(lambda: load_manifest(nul), ManifestError, "NUL")
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as fh:
        fh.truncate(2 << 30)
    refused(lambda: load_manifest(huge), ManifestError, "MB")


# --------------------------------------------------------------------------- command-line parameters


@pytest.mark.parametrize("argv, phrase", hostile.ABSURD_PARAMETERS)
def test_absurd_parameters_are_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, phrase):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and phrase in err, err


# --------------------------------------------------------------------------- outputs, checked before any work


@pytest.mark.parametrize("command", hostile.UNWRITABLE_COMMANDS)
def test_unwritable_output_is_reported_before_the_model_is_loaded(tmp_path, monkeypatch, capsys, command):
    """The run's checkpoint is garbage: an output error (not a checkpoint error) proves the order."""
    monkeypatch.chdir(tmp_path)
    run = hostile.run_dir(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    (tmp_path / "md_is_a_folder").mkdir()
    assert main(hostile.unwritable_output_argv(command, run, blocker, tmp_path / "md_is_a_folder")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("is a file, not a folder" in err or "is a folder, not a file" in err), err
    assert "checkpoint" not in err
    assert not (tmp_path / "Article").exists()  # nothing half-made


# --------------------------------------------------------------------------- training leaves no half-written run


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from mammography.synth import generate_dataset

    root = tmp_path_factory.mktemp("hostile_train")
    return generate_dataset(root / "phantoms", n=16, seed=0, size=(96, 80), progress=False)


def test_train_density_with_a_corrupt_image_leaves_no_run(phantoms, tmp_path, capsys):
    table = pd.read_csv(phantoms)
    corrupt = Path(table.loc[len(table) - 1, "image_path"])
    corrupt = corrupt if corrupt.is_absolute() else phantoms.parent / corrupt
    data = corrupt.read_bytes()
    at = data.find(b"\x28\x00\x10\x00US")
    copy = tmp_path / "corrupt.dcm"
    copy.write_bytes(data[: at + 4] + b"UX" + data[at + 6:])
    table.loc[len(table) - 1, "image_path"] = str(copy)
    manifest = phantoms.parent / "manifest_with_corrupt_image.csv"  # beside the images it names
    table.to_csv(manifest, index=False)
    outdir = tmp_path / "outputs"
    code = main(["train-density", "--csv", str(manifest), "--outdir", str(outdir), "--epochs", "1",
                 "--img-size", "64", "--batch-size", "8", "--device", "cpu", "--no-cache", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "corrupt.dcm" in err, err
    assert sorted(p.name for p in outdir.iterdir()) == []  # no results folder, no temporary folder


def test_train_density_into_a_path_below_a_file_fails_before_training(phantoms, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code = main(["train-density", "--csv", str(phantoms), "--outdir", str(blocker / "out"), "--epochs", "1",
                 "--img-size", "64", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- data hygiene


def test_an_image_listed_twice_never_sits_on_both_sides_of_a_split(phantoms, tmp_path, caplog):
    from mammography.data import load_manifest
    from mammography.data.splits import split_patients

    table = pd.read_csv(phantoms)
    twice = table.iloc[[0]].assign(patient_id="SOMEONE_ELSE")  # same image, another patient
    relabelled = table.iloc[[1]].assign(density_label=(table.iloc[1]["density_label"] % 4) + 1)
    manifest = phantoms.parent / "manifest_with_duplicates.csv"  # beside the images it names
    pd.concat([table, twice, relabelled]).to_csv(manifest, index=False)
    loaded = load_manifest(manifest)
    assert loaded["image_path"].is_unique
    assert len(loaded) == len(table) - 1  # the conflicting labels: both copies dropped
    assert "different patients" in caplog.text and "different density labels" in caplog.text
    for seed in range(10):
        split = split_patients(loaded, val_frac=0.5, seed=seed)
        sides = split.groupby(loaded["image_path"]).nunique()
        assert (sides == 1).all()


def test_spreadsheet_formulas_are_never_written_live_and_read_back_exactly(tmp_path):
    from mammography.csvfiles import csv_bytes
    from mammography.training.rundir import write_csv

    hostile_ids = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "'=quoted", "plain"]
    table = pd.DataFrame({"patient_id": hostile_ids, "y_true": [1, 2, 3, 4, 1, 2, 3], "p": [-0.5] * 7})
    text = csv_bytes(table).decode()
    for line in text.splitlines()[1:]:
        assert line.lstrip('"')[:1] not in "=+-@\t", line
    assert ",-0.5" in text  # numbers stay numbers
    run = hostile.run_dir(tmp_path)
    predictions = pd.DataFrame({"image_path": ["/data/a.dcm"] * 7, "patient_id": hostile_ids,
                                "y_true": [1] * 7, "y_pred": [1] * 7, "p_A": [0.7] * 7, "p_B": [0.1] * 7,
                                "p_C": [0.1] * 7, "p_D": [0.1] * 7})
    write_csv(run / "val_predictions.csv", predictions)
    assert load_run(run).predictions["patient_id"].tolist() == hostile_ids


def test_cli_prints_control_characters_of_file_names_escaped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = "evil\x1b[2J\nname"
    assert main(["report-pack", "--run", name, "--outputs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "evil\\x1b[2J\\nname" in err


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    run = hostile.run_dir(tmp_path)
    (run / "best_model.pth").write_bytes(hostile.code_checkpoints(tmp_path / "c", tmp_path / "PWNED")
                                         ["os.system-p2-zip.pth"].read_bytes())
    out = subprocess.run([sys.executable, "-m", "mammography", "explain", "--run", str(run), "--out",
                          str(tmp_path / "cams"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "asks to run code" in out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "cams").exists()
    assert math.isfinite(0.0)


@pytest.mark.parametrize("kind", hostile.NON_REGULAR)
def test_mask_file_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    from mammography.io.mask import read_mask_file

    path = hostile.non_regular(tmp_path / "roi.png", kind)
    refused(lambda: read_mask_file(path, "ROI mask"), ImageReadError, "ROI mask")


def test_mask_file_of_implausible_size_is_refused_from_its_header(tmp_path):
    from PIL import Image

    from mammography.io.mask import read_mask_file

    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")  # a few kB on disk, 81 MP
    refused(lambda: read_mask_file(tmp_path / "huge.png"), ImageReadError, "implausible image size")


def test_nul_byte_in_a_predictions_path_is_one_line(tmp_path):
    run = hostile.run_dir(tmp_path)
    (run / "val_predictions.csv").write_text(
        "image_path,y_true,y_pred,p_A,p_B,p_C,p_D\n/data/a\x00.dcm,1,1,0.7,0.1,0.1,0.1\n")
    refused(lambda: load_run(run), RunError, "NUL")
