"""One sweep, one record, reused: the record store behind every command.

A genuine earlier-project run (tests/fixtures/pipelines) is swept once into a
record store; the tests then *tamper* with the stored record (a prediction
no model would make) and watch which requests see the tampered record (a
stored sweep was used) and which compute the maps anew (its provenance does
not match).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.cam.store import MemoryStore, RecordStore, SweepKey, open_store
from mammography.cam.sweep import run_maps, sweep_run
from mammography.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines"
RUN = "outputs/seed42/results"
LAYERS = ["features.6", "features.8"]
#: what the tampered record says of image 0: class D with certainty, a prediction the run's model never makes
TAMPERED = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)


@pytest.fixture()
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES)  # the earlier project's paths are relative to where it ran


def _records(store: RecordStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("record.json"))


def _tamper(record_json: Path) -> None:
    """Make the stored record claim TAMPERED for its first image."""
    table_path = record_json.parent / "images.parquet"
    table = pd.read_parquet(table_path)
    for letter, p in zip("ABCD", TAMPERED):
        table.loc[0, f"p_{letter}"] = p
    table.to_parquet(table_path, index=False)


def _sees_tampered(maps) -> bool:
    return bool(np.array_equal(maps.probs[0], TAMPERED))


def test_a_stored_record_serves_every_command_and_a_changed_input_sweeps_again(in_fixtures, tmp_path):
    store = RecordStore(tmp_path / "records")
    run = load_run(RUN)
    first = run_maps(run, LAYERS, "gradcam", store=store, device="cpu", progress=False, num_workers=0)
    (record,) = _records(store)
    info = json.loads(record.read_text())
    assert info["provenance"]["checkpoint_sha256"] == run.checkpoint_sha256
    assert record.parent.parent.name == run.checkpoint_sha256[:16]
    _tamper(record)

    # the same request, a subset of its layers, a selection of its images: the record is read, not recomputed
    again = run_maps(run, LAYERS, "gradcam", store=store, device="cpu", progress=False)
    assert _sees_tampered(again)
    for layer in LAYERS:
        np.testing.assert_array_equal(again.maps[layer], first.maps[layer])
    deep = run_maps(run, "features.8", "grad-cam", store=store, device="cpu", progress=False)
    assert _sees_tampered(deep) and deep.layers == ("features.8",)
    rows = [3, 0, 5]
    some = run_maps(run, LAYERS, "gradcam", store=store, device="cpu", progress=False, rows=rows)
    np.testing.assert_array_equal(some.maps["features.8"], first.maps["features.8"][rows])
    assert some.image_paths == [first.image_paths[i] for i in rows] and _sees_tampered(some.select([1]))

    # what report-pack, explore and analyze call reads it too
    from mammography.analysis.run_analysis import AnalysisOptions, analyze_run
    from mammography.report.evaluate import evaluate_run
    from mammography.report.options import ReportOptions
    from mammography.web.data import sweep_runs

    ev = evaluate_run(run, ReportOptions(device="cpu", layers=tuple(LAYERS), cache_dir=None, progress=False),
                      store=store)
    assert np.array_equal(ev.probs[0], TAMPERED) and ev.y_pred[0] == 4
    (site,) = sweep_runs([run], LAYERS, device="cpu", store=store)
    assert _sees_tampered(site)
    analysis = analyze_run(run, AnalysisOptions(device="cpu", layer="features.8", marker_occlusion=False),
                           store=store)
    first_image = analysis.table.set_index("image_path").loc[first.image_paths[0]]
    assert first_image["y_pred"] == 4 and first_image["confidence"] == 1.0

    # a layer the record lacks, another method or target: swept anew and stored beside it
    shallow = run_maps(run, ["features.4", "features.8"], "gradcam", store=store, device="cpu", progress=False)
    assert not _sees_tampered(shallow)
    np.testing.assert_allclose(shallow.probs, first.probs, atol=1e-6)
    hires = run_maps(run, "features.8", "hirescam", store=store, device="cpu", progress=False)
    assert not _sees_tampered(hires)
    true = run_maps(run, "features.8", "gradcam", targets="true", store=store, device="cpu", progress=False)
    assert not _sees_tampered(true) and true.target_mode == "true"
    assert len(_records(store)) == 4
    # the new sweep of features.4 + features.8 did not cover features.6: the tampered record stays and serves
    assert _sees_tampered(run_maps(run, ["features.6"], store=store, device="cpu", progress=False))


def test_a_changed_checkpoint_or_preprocessing_sweeps_again(in_fixtures, tmp_path):
    store = RecordStore(tmp_path / "records")
    run = load_run(RUN)
    run_maps(run, "features.8", store=store, device="cpu", progress=False)
    (record,) = _records(store)
    _tamper(record)

    # the same weights in another folder (a copied run): the same record
    copy = tmp_path / "copy" / "results"
    shutil.copytree(RUN, copy)
    assert _sees_tampered(run_maps(load_run(copy), "features.8", store=store, device="cpu", progress=False))

    # other weights: a new sweep
    retrained = tmp_path / "retrained" / "results"
    shutil.copytree(RUN, retrained)
    state = torch.load(retrained / "best_model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("classifier.1.bias"))
    state[key] = state[key] + 0.5
    torch.save(state, retrained / "best_model.pt")
    other = run_maps(load_run(retrained), "features.8", store=store, device="cpu", progress=False)
    assert not _sees_tampered(other)

    # another input size in the run's preprocessing record: a new sweep
    resized = tmp_path / "resized" / "results"
    shutil.copytree(RUN, resized)
    summary = json.loads((resized / "summary.json").read_text())
    summary["img_size"] = 64
    (resized / "summary.json").write_text(json.dumps(summary))
    small = run_maps(load_run(resized), "features.8", store=store, device="cpu", progress=False)
    assert not _sees_tampered(small) and small.img_size == 64
    assert len(_records(store)) == 3

    # no store: always a sweep, nothing written
    assert not _sees_tampered(run_maps(run, "features.8", device="cpu", progress=False))
    assert open_store(None) is None


def test_memory_store_and_unreadable_records(in_fixtures, tmp_path):
    run = load_run(RUN)
    memory = MemoryStore()
    first = run_maps(run, LAYERS, store=memory, device="cpu", progress=False)
    key = SweepKey.of(run, "gradcam", "predicted")
    assert memory.find(key, ["features.8"]).maps["features.8"] is first.maps["features.8"]  # no copy, no sweep
    assert memory.find(key, ["features.4"]) is None

    # a damaged record is a miss (swept again and replaced), never an error
    store = RecordStore(tmp_path / "records")
    stored = run_maps(run, "features.8", store=store, device="cpu", progress=False)
    (record,) = _records(store)
    (record.parent / "images.parquet").write_bytes(b"not parquet")
    again = run_maps(run, "features.8", store=store, device="cpu", progress=False)
    np.testing.assert_array_equal(again.maps["features.8"], stored.maps["features.8"])
    (record,) = _records(store)
    assert pd.read_parquet(record.parent / "images.parquet").shape[0] == len(first)


def test_loader_workers_give_the_same_sweep(in_fixtures):
    """Decoding in worker processes changes nothing: the same tensors, maps and geometries."""
    run = load_run(RUN)
    inline = sweep_run(run, LAYERS, device="cpu", progress=False, num_workers=0, batch_size=4)
    workers = sweep_run(run, LAYERS, device="cpu", progress=False, num_workers=2, batch_size=4)
    for layer in LAYERS:
        np.testing.assert_array_equal(inline.maps[layer], workers.maps[layer])
    np.testing.assert_array_equal(inline.logits, workers.logits)
    assert inline.geometries == workers.geometries


def test_an_unreadable_image_in_a_worker_is_one_clear_error(in_fixtures, tmp_path):
    from mammography.errors import ImageReadError

    copy = tmp_path / "run"
    shutil.copytree(RUN, copy)
    table = pd.read_csv(copy / "val_predictions.csv")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    table.loc[5, "path"] = str(broken)
    table.to_csv(copy / "val_predictions.csv", index=False)
    with pytest.raises(ImageReadError) as err:
        sweep_run(load_run(copy), "features.8", device="cpu", progress=False, num_workers=2, batch_size=2)
    message = str(err.value)
    assert "broken.dcm" in message and "\n" not in message and "Traceback" not in message
    assert os.path.exists(broken)
