"""Crafted hostile and broken inputs of the security audit (not a test module).

Shared by ``test_hostile_inputs.py`` (the regression suite) and
``bench/bench_hostile_inputs.py`` (the tally and peak-memory figures). Every
builder writes real files the way an attacker or a damaged disk would; the
code-running payloads create a marker file if any of them ever runs.
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import pickle
import pickletools
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import torch

# --------------------------------------------------------------------------- checkpoints that would run code


class _Reduce:
    """Unpickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle wants the reduce callable to look callable; never called here
        raise AssertionError("not called when saving")


def _getattr_chain_pickle(marker: Path) -> bytes:
    """``getattr(__import__('os'), 'system')('touch marker')`` spelled in raw protocol-2 opcodes."""
    command = f"touch {marker}".encode()
    return (b"\x80\x02cbuiltins\ngetattr\n" + b"cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
            + b"X\x06\x00\x00\x00system\x86R" + b"X" + struct.pack("<I", len(command)) + command + b"\x85R.")


def code_payloads(marker: Path) -> dict[str, object]:
    """Objects whose unpickling would create ``marker`` (each a different route to running code)."""
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "exec": _Reduce(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": _Reduce(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
        "open": _Reduce(io.open, str(marker), "w"),
        "shutil.copyfile": _Reduce(shutil.copyfile, os.devnull, str(marker)),
        "getattr(Path, 'touch')()": _Reduce(_Reduce(getattr, pathlib.Path(marker), "touch")),
        "nn.Module": torch.nn.Linear(2, 2),
    }


def code_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Every payload saved by ``torch.save`` in the zip and legacy formats and several pickle protocols,
    inside a plausible checkpoint (next to real tensors), plus raw pickles of ``os.system``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, payload in code_payloads(marker).items():
        for protocol, zipped in ((2, True), (4, True), (5, True), (2, False), (4, False)):
            path = folder / f"{name.replace(' ', '_')}-p{protocol}-{'zip' if zipped else 'legacy'}.pth"
            state = {"model_state": {"features.0.0.weight": torch.zeros(2, 2)}, "extra": payload}
            torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
            out[path.name] = path
    for protocol in range(0, 6):
        path = folder / f"raw-pickle-os.system-p{protocol}.pth"
        path.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=protocol))
        out[path.name] = path
    path = folder / "raw-getattr-chain.pth"
    path.write_bytes(_getattr_chain_pickle(marker))
    out[path.name] = path
    return out


# --------------------------------------------------------------------------- checkpoints that inflate


def _with_numel(pickle_bytes: bytes, old: int, new: int) -> bytes:
    """The pickle with every small integer ``old`` (BININT1) replaced by ``new`` (BININT)."""
    out, last = bytearray(), 0
    for op, arg, pos in pickletools.genops(pickle_bytes):
        if op.name == "BININT1" and arg == old:
            out += pickle_bytes[last:pos] + b"J" + struct.pack("<i", new)
            last = pos + 2
    return bytes(out + pickle_bytes[last:])


def zip_bomb_checkpoint(path: Path, claimed_bytes: int) -> Path:
    """A torch zip checkpoint whose one tensor storage is ``claimed_bytes`` of zeros, deflated (~1000:1)."""
    numel = claimed_bytes // 4
    template = io.BytesIO()
    torch.save({"w": torch.zeros(7)}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                dst.writestr(info.filename, _with_numel(data, 7, numel))
            elif info.filename.endswith("data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(entry, "w", force_zip64=True) as fh:
                    block = bytes(1 << 24)
                    for start in range(0, numel * 4, len(block)):
                        fh.write(block[: min(len(block), numel * 4 - start)])
            else:
                dst.writestr(info.filename, data)
    return path


def pickle_bomb_checkpoint(path: Path, pickle_bytes: int) -> Path:
    """A torch zip checkpoint whose object data (data.pkl) unpack to ``pickle_bytes``, deflated."""
    template = io.BytesIO()
    torch.save({"w": torch.zeros(7)}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                body = b"\x80\x02X" + struct.pack("<I", pickle_bytes) + bytes(pickle_bytes) + b"."
                with dst.open(entry, "w", force_zip64=True) as fh:
                    fh.write(body)
            else:
                dst.writestr(info.filename, src.read(info))
    return path


def legacy_claim_checkpoint(path: Path, claimed_bytes: int) -> Path:
    """A small legacy-format checkpoint whose storage claims ``claimed_bytes`` (torch allocates it first)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(7)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol, system info
        pickle.load(stream)
    start = stream.tell()
    for _ in pickletools.genops(stream):
        pass
    end = stream.tell()
    path.write_bytes(data[:start] + _with_numel(data[start:end], 7, claimed_bytes // 4) + data[end:])
    return path


# --------------------------------------------------------------------------- checkpoints with odd weights


def odd_weight_checkpoints(folder: Path) -> dict[str, Path]:
    """Checkpoints that load but hold weights no trained model has."""
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch
        tensors = {
            "nan": torch.tensor([0.0, float("nan")]),
            "inf": torch.tensor([float("inf"), 0.0]),
            "sparse": torch.zeros(2, 2).to_sparse(),
            "meta": torch.empty(2, device="meta"),
            "quantized": torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8),
            "complex": torch.zeros(2, dtype=torch.complex64),
        }
    out = {}
    for name, tensor in tensors.items():
        path = folder / f"{name}.pth"
        torch.save({"features.0.0.weight": tensor}, path)
        out[name] = path
    return out


def broken_checkpoints(folder: Path) -> dict[str, Path]:
    """Damaged files: empty, random, cut short, a zip without data.pkl, a legacy file cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, good)
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": b"",
        "random": os.urandom(4096),
        "zip cut short": good.getvalue()[: len(good.getvalue()) // 2],
        "legacy cut short": legacy.getvalue()[:200],
    }
    out = {}
    for name, data in files.items():
        out[name] = folder / f"{name.replace(' ', '_')}.pth"
        out[name].write_bytes(data)
    no_pkl = folder / "no_data_pkl.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(no_pkl, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info.filename, src.read(info))
    out["zip without data.pkl"] = no_pkl
    return out


def harmless_checkpoints(folder: Path) -> dict[str, Path]:
    """Plain weights saved every way torch.save can: must all load."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    state = {"features.0.0.weight": torch.randn(2, 2)}
    out = {}
    for protocol in range(1, 6):
        for zipped in (True, False):
            path = folder / f"plain-p{protocol}-{'zip' if zipped else 'legacy'}.pth"
            torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
            out[path.name] = path
    for protocol in (2, 5):
        path = folder / f"with-numpy-metrics-p{protocol}.pth"
        torch.save({"model_state": state, "kappa": np.float64(0.7), "cm": np.eye(4, dtype=np.int64)}, path,
                   pickle_protocol=protocol)
        out[path.name] = path
    for cls in (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath):
        path = folder / f"config-{cls.__name__}.pth"
        torch.save({"model_state": state, "config": {"csv": cls("data/train.csv")}}, path)
        out[path.name] = path
    # a WindowsPath cannot be made on Linux: write the pickle torch would write on Windows
    path = folder / "config-WindowsPath.pth"
    torch.save({"model_state": state, "config": {"csv": pathlib.PurePosixPath("C:/data/train.csv")}}, path)
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in records.items():
            dst.writestr(name, data.replace(b"pathlib\nPurePosixPath", b"pathlib\nWindowsPath"))
    out[path.name] = path
    return out


# --------------------------------------------------------------------------- DICOM


def mammogram_dicom(path: Path, stored, *, syntax=None, **elements) -> Path:
    """A minimal MG data set holding ``stored`` (uint16), optionally compressed, with extra ``elements``."""
    from test_io_dicom import make_dataset  # the io tests' data set, reused

    ds = make_dataset(stored)
    if syntax is not None:
        ds.compress(syntax, encoding_plugin="pydicom")
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def lying_rle_dicom(path: Path, rows: int, cols: int) -> Path:
    """An RLE file whose header declares rows x cols while its data hold a 64 x 64 image."""
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless

    mammogram_dicom(path, np.zeros((64, 64), dtype=np.uint16), syntax=RLELossless)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path, enforce_file_format=True)
    return path


def rle_dicom_at_cap(path: Path, side: int) -> Path:
    """A genuine RLE mammogram of side x side pixels (half of it bright): what a large detector writes."""
    import numpy as np
    from pydicom.uid import RLELossless

    image = np.zeros((side, side), dtype=np.uint16)
    image[: side // 2] = 3000
    return mammogram_dicom(path, image, syntax=RLELossless)


# --------------------------------------------------------------------------- files that are not regular, run files


NON_REGULAR = ("fifo", "directory", "char device", "NUL byte")


def non_regular(path: Path, kind: str) -> Path:
    """Make ``path`` a FIFO (a reader blocks), a folder, a link to /dev/zero (never ends); or return a
    path with a NUL byte (no file system accepts it)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "char device":
        path.symlink_to("/dev/zero")
    else:
        return path.with_name(path.name.replace(".", "\x00.", 1))
    return path


def run_dir(root: Path, summary: dict | None = None) -> Path:
    """A hand-made run directory ``root/results_4`` (its checkpoint is not a checkpoint: load_run does not read it)."""
    import json

    run = root / "results_4"
    (run / "metrics").mkdir(parents=True, exist_ok=True)
    (run / "best_model.pth").write_bytes(b"not loaded by load_run")
    (run / "summary.json").write_text(json.dumps(summary or {"seed": 42, "img_size": 64}))
    (run / "metrics" / "val_metrics.json").write_text(json.dumps({"acc": 0.5}))
    (run / "val_predictions.csv").write_text(
        "image_path,y_true,y_pred,p_A,p_B,p_C,p_D\n/data/a.dcm,1,1,0.7,0.1,0.1,0.1\n")
    return run


#: summary.json values no run has, and the word the refusal must contain
ABSURD_SUMMARIES = {
    "img_size 60000": ({"seed": 42, "img_size": 60000}, "img_size"),
    "mean NaN": ({"seed": 42, "img_size": 64, "mean": [float("nan")] * 3}, "mean"),
    "std 0": ({"seed": 42, "img_size": 64, "std": [0.2, 0.0, 0.2]}, "std"),
    "std negative": ({"seed": 42, "img_size": 64, "std": [-1]}, "std"),
    "mean absurd": ({"seed": 42, "img_size": 64, "mean": [1e300] * 3}, "mean"),
    "img_size inf": ({"seed": 42, "img_size": float("inf")}, "img_size"),
}
HOSTILE_SUMMARY_KINDS = ("deep nesting", "huge", "fifo", "directory", "char device")
HOSTILE_PREDICTION_KINDS = ("nested probs", "long probs", "fifo", "huge")


def hostile_summary(run: Path, kind: str) -> None:
    summary = run / "summary.json"
    summary.unlink()
    if kind == "deep nesting":
        summary.write_text("[" * 200_000 + "]" * 200_000)
    elif kind == "huge":
        with open(summary, "wb") as fh:
            fh.truncate(100 << 20)  # sparse: costs no disk, would cost memory to read
    else:
        non_regular(summary, kind)


def hostile_predictions(run: Path, kind: str) -> None:
    csv = run / "val_predictions.csv"
    csv.unlink()
    if kind == "nested probs":
        csv.write_text('path,y_true,y_pred,probs\n/a.dcm,0,0,"' + "[" * 100_000 + "]" * 100_000 + '"\n')
    elif kind == "long probs":
        csv.write_text('path,y_true,y_pred,probs\n/a.dcm,0,0,"[' + "0.1, " * 200_000 + '0.1]"\n')
    elif kind == "huge":
        with open(csv, "wb") as fh:
            fh.truncate(2 << 30)
    else:
        non_regular(csv, kind)


#: command lines with absurd parameters, and the word the one-line error must contain
ABSURD_PARAMETERS = [
    (["train-density", "--csv", "m.csv", "--img-size", "60000"], "--img-size"),
    (["train-density", "--csv", "m.csv", "--batch-size", "0"], "--batch-size"),
    (["train-density", "--csv", "m.csv", "--lr", "nan"], "--lr"),
    (["train-density", "--csv", "m.csv", "--weight-decay", "nan"], "--weight-decay"),
    (["report-pack", "--run", "r", "--alpha", "nan"], "--alpha"),
    (["report-pack", "--run", "r", "--per-class", "100000"], "--per-class"),
    (["report-pack", "--run", "r", "--batch-size", "1000000000"], "--batch-size"),
    (["analyze", "--run", "r", "--analysis-size", "100000"], "--analysis-size"),
    (["analyze", "--run", "r", "--outside-ratio", "nan"], "outside_breast"),
    (["explain", "--run", "r", "--batch-size", "0"], "batch size"),
    (["explore", "--out", "site", "--serve", "--port", "70000"], "--port"),
]


def unwritable_output_argv(command: str, run: Path, blocker: Path, folder: Path) -> list[str]:
    """A command line whose output lies below the regular file ``blocker`` (or, for --markdown, is ``folder``)."""
    return {
        "report-pack": ["report-pack", "--run", str(run), "--assets-dir", str(blocker / "assets")],
        "report-pack --markdown": ["report-pack", "--run", str(run), "--markdown", str(folder)],
        "analyze": ["analyze", "--run", str(run), "--out", str(blocker / "analysis")],
        "explain": ["explain", "--run", str(run), "--out", str(blocker / "cams")],
        "explore": ["explore", "--run", str(run), "--out", str(blocker / "site")],
    }[command] + ["--device", "cpu", "--no-progress"]


UNWRITABLE_COMMANDS = ("report-pack", "analyze", "explain", "explore", "report-pack --markdown")
