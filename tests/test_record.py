"""The per-run sweep record: written, read back whole or by layer, sharded, matched by provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mammography.cam.record import RECORD_FILE, load_record, matches, write_record
from mammography.cam.sweep import sweep_run
from mammography.errors import RunError
from mammography.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines"


@pytest.fixture(scope="module")
def sweep():
    old = Path.cwd()
    os.chdir(FIXTURES)
    try:
        run = load_run("outputs/seed42/results")
        return run, sweep_run(run, ["features.6", "features.8"], device="cpu", progress=False)
    finally:
        os.chdir(old)


def test_round_trip_is_exact(sweep, tmp_path):
    run, maps = sweep
    folder = write_record(maps, tmp_path / "rec")
    record = load_record(folder)
    assert len(record) == len(maps) and record.layers == ("features.6", "features.8")
    assert record.table["y_pred"].tolist() == maps.y_pred.tolist()
    back = record.to_run_maps()
    for layer in maps.layers:
        np.testing.assert_array_equal(back.maps[layer], maps.maps[layer])
    np.testing.assert_array_equal(back.probs, maps.probs)
    np.testing.assert_array_equal(back.logits, maps.logits)
    assert back.geometries == maps.geometries and back.image_paths == maps.image_paths
    assert back.provenance() == maps.provenance()
    # one layer is read without the others, and sliced without reading the rest
    assert record.layer("features.8")[3:5].shape == (2, *maps.maps["features.8"].shape[1:])
    # rewriting replaces the record whole
    write_record(maps, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


def test_provenance_decides_reuse(sweep, tmp_path):
    run, maps = sweep
    record = load_record(write_record(maps, tmp_path / "rec"))
    same = dict(checkpoint_sha256=run.checkpoint_sha256, preprocessing=run.preprocessing.to_record(),
                method="gradcam", layers=["features.8"], target_mode="predicted", image_paths=maps.image_paths)
    assert matches(record, **same)
    assert not matches(record, **{**same, "checkpoint_sha256": "0" * 64})
    assert not matches(record, **{**same, "method": "hirescam"})
    assert not matches(record, **{**same, "layers": ["features.4"]})
    assert not matches(record, **{**same, "image_paths": maps.image_paths[::-1]})
    other = {**run.preprocessing.to_record(), "img_size": 128}
    assert not matches(record, **{**same, "preprocessing": other})


def test_sharded_record_reads_like_one(sweep, tmp_path):
    run, maps = sweep
    from dataclasses import replace

    halves = [replace(maps, maps={k: v[s] for k, v in maps.maps.items()}, logits=maps.logits[s], probs=maps.probs[s],
                      targets=maps.targets[s], y_true=maps.y_true[s], image_paths=maps.image_paths[s],
                      geometries=maps.geometries[s])
              for s in (slice(0, 5), slice(5, None))]
    root = tmp_path / "sharded"
    shards = []
    for i, half in enumerate(halves):
        write_record(half, root / "shards" / f"s{i}")
        shards.append({"id": f"s{i}", "path": f"shards/s{i}", "n_images": len(half)})
    info = json.loads((root / "shards/s0" / RECORD_FILE).read_text())
    info.update(n_images=len(maps), shards=shards, provenance={**info["provenance"]})
    (root / RECORD_FILE).write_text(json.dumps(info))
    record = load_record(root)
    back = record.to_run_maps()
    np.testing.assert_array_equal(back.maps["features.8"], maps.maps["features.8"])
    assert back.image_paths == maps.image_paths


def test_incomplete_or_foreign_records_are_refused(tmp_path):
    with pytest.raises(RunError, match="no complete sweep record"):
        load_record(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(RunError, match="not a sweep record"):
        load_record(tmp_path)
