"""Checkpoint loading: every saved form loads exactly, unsafe or unfit files are refused.

Fixtures are built here: a real EfficientNet-B0 density model whose weights
are saved in each form the earlier ``mammography-pipelines`` project used.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import efficientnet_b0

from mammography.errors import CheckpointError
from mammography.models import build_density_model
from mammography.models.checkpoint import (
    checkpoint_sha256,
    load_backbone_weights,
    load_checkpoint_state,
    load_density_checkpoint,
    load_state_into,
    normalise_state_dict,
)


class OpensFileOnLoad:
    """Unpickling this calls ``open(path, "w")``: creates the file if it ever runs."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShellOnLoad:
    """Unpickling this calls ``os.system("touch path")``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    """Weights of a seeded density model, with non-trivial BN buffers."""
    torch.manual_seed(7)
    model = build_density_model()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)  # differ from a fresh model's 0/1
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def target() -> nn.Module:
    """A single freshly built model that tests load into (avoids rebuilding)."""
    torch.manual_seed(123)
    return build_density_model()


def _assert_same_state(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def _save(obj, path: Path, **kwargs) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _backbone_duplicated(state: dict) -> OrderedDict:
    """The earlier project's layout: features.* plus backbone.features.* (aliased), classifier.1.*."""
    out = OrderedDict()
    for key, value in state.items():
        out[key] = value
        if key.startswith("features."):
            out["backbone." + key] = value.clone()
    return out


def test_plain_state_dict_loads_exactly(tmp_path, source_state, target):
    path = _save(source_state, tmp_path / "best_model.pth")
    state = load_checkpoint_state(path)
    _assert_same_state(state, source_state)
    load_state_into(target, state, path)
    _assert_same_state(target.state_dict(), source_state)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"model_state": s},
        lambda s: {"model_state_dict": s, "epoch": 12, "optimizer": {"lr": 1e-3, "state": {}}},
        lambda s: {"state_dict": s, "best_metric": 0.5, "arch": "efficientnet_b0"},
        lambda s: {"checkpoint_version": 2, "state_dict": {"model_state": s, "epoch": 3}},
        # sklearn metrics saved next to the weights are numpy scalars / arrays
        lambda s: {"model_state": s, "kappa": np.float64(0.61), "cm": np.eye(4, dtype=np.int64), "n": np.int32(9)},
    ],
    ids=["model_state", "model_state_dict+optimizer", "state_dict+extras", "nested", "numpy-extras"],
)
def test_wrapped_checkpoints_load_exactly(tmp_path, source_state, wrap, suffix):
    path = _save(wrap(source_state), tmp_path / f"best_model{suffix}")
    _assert_same_state(load_checkpoint_state(path), source_state)


def test_legacy_non_zip_serialisation_loads(tmp_path, source_state):
    path = _save({"model_state": source_state}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    _assert_same_state(load_checkpoint_state(path), source_state)


def test_earlier_project_backbone_duplicates_and_dataparallel_prefix(tmp_path, source_state, target):
    dup = _backbone_duplicated(source_state)
    assert any(k.startswith("backbone.features.") for k in dup) and "classifier.1.weight" in dup
    for name, obj in {
        "dup.pt": {"model_state_dict": dup, "epoch": 4},
        "dp.pth": {"module." + k: v for k, v in dup.items()},
    }.items():
        path = _save(obj, tmp_path / name)
        state = load_checkpoint_state(path)
        _assert_same_state(state, source_state)
        load_state_into(target, state, path)
        _assert_same_state(target.state_dict(), source_state)


def test_backbone_only_keys_are_mapped(tmp_path, source_state):
    only = {"backbone." + k: v for k, v in source_state.items()}
    path = _save({"state_dict": only}, tmp_path / "backbone_only.pth")
    _assert_same_state(load_checkpoint_state(path), source_state)


def test_disagreeing_backbone_duplicates_are_refused(tmp_path, source_state):
    dup = _backbone_duplicated(source_state)
    dup["backbone.features.0.0.weight"] = dup["backbone.features.0.0.weight"] + 1.0
    path = _save(dup, tmp_path / "bad_dup.pth")
    with pytest.raises(CheckpointError, match=r"two different copies.*features\.0\.0\.weight"):
        load_checkpoint_state(path)


def test_loaded_model_predicts_like_the_saved_one(tmp_path, source_state):
    path = _save({"model_state": _backbone_duplicated(source_state)}, tmp_path / "best_model.pt")
    model = load_density_checkpoint(path)
    assert not model.training
    reference = build_density_model()
    reference.load_state_dict(source_state)
    reference.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_fused_head_is_refused_without_partial_load(tmp_path, source_state, target):
    fused = {k: v + 1.0 if v.is_floating_point() else v for k, v in source_state.items()}
    fused["classifier.1.weight"] = torch.zeros(4, 1280 + 64)
    path = _save({"model_state": fused}, tmp_path / "fused.pth")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_state_into(target, load_checkpoint_state(path), path)
    message = str(info.value)
    assert "fused" in message and "1344" in message and "64 extra" in message and "fused.pth" in message
    _assert_same_state(target.state_dict(), before)  # nothing was loaded
    with pytest.raises(CheckpointError, match="fused"):
        load_density_checkpoint(path)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("features.3.0.block.1.1.running_var"), r"1 missing keys: features\.3\.0\.block\.1\.1\.running_var"),
        (lambda s: s.__setitem__("extra_head.weight", torch.zeros(3)), r"1 unexpected keys: extra_head\.weight"),
        (lambda s: s.__setitem__("features.0.0.weight", torch.zeros(32, 1, 3, 3)), r"shape mismatches: features\.0\.0\.weight \(32, 1, 3, 3\)"),
        (lambda s: (s.__setitem__("classifier.1.weight", torch.zeros(3, 1280)), s.__setitem__("classifier.1.bias", torch.zeros(3))), r"predicts 3 classes, expected 4"),
    ],
    ids=["missing", "unexpected", "shape", "head-classes"],
)
def test_key_problems_are_errors_naming_keys(tmp_path, source_state, target, edit, expected):
    state = dict(source_state)
    edit(state)
    path = _save(state, tmp_path / "odd.pth")
    before = target.state_dict()["features.1.0.block.0.0.weight"].clone()
    with pytest.raises(CheckpointError, match=expected):
        load_state_into(target, load_checkpoint_state(path), path)
    assert torch.equal(target.state_dict()["features.1.0.block.0.0.weight"], before)


@pytest.mark.parametrize("payload", [OpensFileOnLoad, RunsShellOnLoad], ids=["open", "os.system"])
def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, source_state, payload):
    marker = tmp_path / "pwned.txt"
    path = _save({"model_state": source_state, "extra": payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_state(path)
    message = str(info.value)
    assert "evil.pth" in message and "asks to run code" in message and "refusing" in message
    assert "state_dict" in message and "weights_only" not in message and "\n" not in message
    with pytest.raises(CheckpointError):
        load_density_checkpoint(path)
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path, target):
    path = _save(target, tmp_path / "whole_model.pt")
    with pytest.raises(CheckpointError, match=r"asks to run code .*torchvision"):
        load_checkpoint_state(path)


def test_missing_directory_and_garbage_files_name_the_file(tmp_path):
    missing = tmp_path / "results_4" / "best_model.pth"
    with pytest.raises(CheckpointError, match=r"results_4/best_model\.pth does not exist.*train-density --save-best"):
        load_density_checkpoint(missing)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint_state(tmp_path)
    garbage = tmp_path / "notes.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a readable PyTorch checkpoint"):
        load_checkpoint_state(garbage)
    no_tensors = _save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"meta\.pth has no state_dict.*epoch, lr"):
        load_checkpoint_state(no_tensors)


def test_normalise_state_dict_strips_stacked_prefixes(source_state):
    wrapped = {"module._orig_mod." + k: v for k, v in source_state.items()}
    _assert_same_state(normalise_state_dict({"model_state": wrapped}), source_state)


def test_checkpoint_sha256_matches_file_bytes(tmp_path, source_state):
    path = _save(source_state, tmp_path / "a.pth")
    assert checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    other = _save({"model_state": source_state}, tmp_path / "b.pth")
    assert checkpoint_sha256(other) != checkpoint_sha256(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_sha256(tmp_path / "none.pth")


def test_pretrained_weights_load_features_only(tmp_path):
    torch.manual_seed(3)
    imagenet_like = efficientnet_b0(weights=None)  # 1000-class head, like torchvision's file
    path = _save(imagenet_like.state_dict(), tmp_path / "efficientnet_b0_imagenet.pth")
    model = load_backbone_weights(build_density_model(), path)
    got = model.state_dict()
    for key, value in imagenet_like.state_dict().items():
        if key.startswith("features."):
            assert torch.equal(got[key], value), key
    assert model.classifier[1].weight.shape == (4, 1280)

    head_only = _save({"classifier.1.weight": torch.zeros(1000, 1280)}, tmp_path / "head_only.pth")
    with pytest.raises(CheckpointError, match="no features"):
        load_backbone_weights(efficientnet_b0(weights=None), head_only)
    partial = {k: v for k, v in imagenet_like.state_dict().items() if not k.startswith("features.8.")}
    with pytest.raises(CheckpointError, match=r"missing keys: features\.8\."):
        load_backbone_weights(efficientnet_b0(weights=None), _save(partial, tmp_path / "partial.pth"))
