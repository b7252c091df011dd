"""The explorer's site writer, fed plain records: real phantoms, real Grad-CAM maps.

No browser here (see test_web_browser.py): these tests read back what the
writer put on disk, the way the page's JavaScript reads it.
"""

import base64
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mammography.cam import GradCAM
from mammography.cli import main
from mammography.errors import ConfigError
from mammography.io import fit_to_square
from mammography.models import build_density_model
from mammography.synth import make_phantom
from mammography.web.serve import start_server
from mammography.web.site import (
    SITE_MARKER,
    SeedResult,
    SiteImage,
    SiteLayer,
    SiteSeed,
    build_site,
    consensus,
)

SIZE = 64
SEEDS = [SiteSeed("seed42", "seed 42", "/runs/a", {"acc": 0.5}), SiteSeed("seed43", "seed 43", "/runs/b", {})]
LAYERS = [SiteLayer("features.8", "final block"), SiteLayer("features.4", "intermediate")]


def read_data_js(site: Path) -> dict:
    text = (site / "data.js").read_text()
    prefix = "window.MAMMO_SITE = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


def read_maps_js(site: Path, key: str) -> dict:
    text = (site / "maps" / f"{key}.js").read_text()
    m = re.fullmatch(r'window\.mammoMaps\("(\w+)",(.*)\);\n', text, re.S)
    assert m and m.group(1) == key
    return json.loads(m.group(2))


def decode_map(entry: dict, j: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(entry["m"][j]), dtype=np.uint8)
    return raw.reshape(entry["h"], entry["w"])


@pytest.fixture(scope="module")
def phantom_images():
    """Four phantoms (both lateralities, two classes) with Grad-CAM maps of two
    untrained EfficientNet-B0s at 64 px, as two "seeds" would give them."""
    specs = [(1, "CC", "L"), (4, "MLO", "R"), (2, "CC", "R"), (3, "MLO", "L")]
    phantoms = [make_phantom(c, v, lat, shape=(96, 78), seed=i) for i, (c, v, lat) in enumerate(specs)]
    prepared = [fit_to_square(p.pixels, SIZE, flip=p.laterality == "R") for p in phantoms]
    x = torch.stack([torch.from_numpy(sq).expand(3, -1, -1) for sq, _ in prepared])
    results = {}
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(k)
        model = build_density_model().eval()
        res = GradCAM(model, layers=["features.4", "features.8"])(x)
        results[seed.key] = res
    images = []
    for i, (p, (sq, geom)) in enumerate(zip(phantoms, prepared)):
        per_seed = {}
        for seed in SEEDS:
            res = results[seed.key]
            probs = res.probs[i].tolist()
            pred = int(np.argmax(probs)) + 1
            per_seed[seed.key] = SeedResult(
                pred=pred, confidence=max(probs), probs=probs,
                maps={name: res.maps[name][i].numpy() for name in res.layers}, spurious=0.1 * i,
            )
        images.append(SiteImage(
            name=f"P{i}_{p.laterality}{p.view}.dcm", y_true=p.density_class, square=sq, geometry=geom,
            results=per_seed, roi=p.dense_mask if i % 2 == 0 else None,
            attention_agreement=0.5, high_agreement=i != 1, reasons=("predictions differ",) if i == 1 else (),
            meta={"view": p.view, "laterality": p.laterality, "dense_fraction": float("nan")},
        ))
    return images


@pytest.fixture(scope="module")
def site(phantom_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "site"
    summary = build_site(out, iter(phantom_images), SEEDS, LAYERS, title="Test explorer")
    return out, summary


def test_consensus_takes_the_majority_and_breaks_ties_by_confidence():
    assert consensus([3, 3, 2], [0.5, 0.6, 0.9]) == (3, pytest.approx(2 / 3))
    assert consensus([2, 3], [0.9, 0.6]) == (2, 0.5)
    assert consensus([2, 3], [0.4, 0.6]) == (3, 0.5)
    assert consensus([4], [0.7]) == (4, None)  # one seed: nothing to agree with
    with pytest.raises(ConfigError):
        consensus([], [])


def test_site_has_one_record_per_image_with_each_seeds_prediction(site, phantom_images):
    out, summary = site
    data = read_data_js(out)
    assert summary.n_images == len(data["images"]) == len(phantom_images)
    assert [s["key"] for s in data["seeds"]] == ["seed42", "seed43"]
    assert [x["key"] for x in data["layers"]] == ["features.8", "features.4"]
    assert set(data["colormaps"]) == {"jet", "viridis", "inferno", "gray"}
    for rec, img in zip(data["images"], phantom_images):
        assert rec["n"] == img.name and rec["t"] == img.y_true
        assert rec["p"] == [img.results[s.key].pred for s in SEEDS]
        assert rec["c"] == pytest.approx([img.results[s.key].confidence for s in SEEDS], abs=1e-4)
        majority, agreement = consensus(rec["p"], rec["c"])
        assert rec["m"] == majority and rec["pa"] == pytest.approx(agreement, abs=1e-4)
        assert rec["sp"] == pytest.approx(np.mean([img.results[s.key].spurious for s in SEEDS]), abs=1e-4)
        assert rec["af"] == int(img.high_agreement) and rec["ar"] == "; ".join(img.reasons)
        assert rec["roi"] == int(img.roi is not None)


def test_images_are_small_jpegs_of_the_breast_as_acquired(site, phantom_images):
    out, _ = site
    data = read_data_js(out)
    for rec, img in zip(data["images"], phantom_images):
        full = Image.open(out / "img" / f"{rec['k']}.jpg")
        thumb = Image.open(out / "thumb" / f"{rec['k']}.jpg")
        assert full.format == thumb.format == "JPEG"
        assert full.size == (rec["w"], rec["h"]) and full.height == 384 and thumb.height == 96
        h, w = img.geometry.resized_shape  # padding cropped: the breast's own aspect ratio
        assert full.width / full.height == pytest.approx(w / h, abs=0.01)
        # right breasts are shown unflipped: the chest wall (bright side) is on the right
        px = np.asarray(full, dtype=float)
        left, right = px[:, : px.shape[1] // 4].mean(), px[:, -px.shape[1] // 4 :].mean()
        laterality = img.meta["laterality"]
        assert (right > left) if laterality == "R" else (left > right)


def test_maps_are_stored_low_res_with_the_frame_that_places_them(site, phantom_images):
    out, _ = site
    for i, img in enumerate(phantom_images):
        maps = read_maps_js(out, f"i{i:05d}")
        g = img.geometry
        frame = [g.offset[0] / SIZE, g.offset[1] / SIZE, g.resized_shape[0] / SIZE, g.resized_shape[1] / SIZE,
                 int(g.flipped)]
        assert maps["geo"] == [pytest.approx(frame)] * len(SEEDS)
        for j, seed in enumerate(SEEDS):
            for layer in LAYERS:
                raw = img.results[seed.key].maps[layer.key]
                stored = decode_map(maps["layers"][layer.key], j)
                assert stored.shape == raw.shape  # 2x2 (features.8), 4x4 (features.4) at 64 px
                span = raw.max() - raw.min()
                expect = np.round((raw - raw.min()) / span * 255) if span > 1e-12 else np.zeros_like(raw)
                np.testing.assert_allclose(stored, expect, atol=1)
            assert maps["probs"][j] == pytest.approx(img.results[seed.key].probs, abs=1e-4)
        assert "dense_fraction" not in maps["meta"]  # NaN dropped
        assert maps["meta"]["view"] == img.meta["view"]


def test_roi_outline_follows_the_expert_mask(tmp_path):
    square = np.zeros((SIZE, SIZE), np.float32)
    roi = np.zeros((200, 100), bool)  # original orientation, its own resolution
    roi[50:150, 20:60] = True
    img = SiteImage("x", 2, square, {"seed42": SeedResult(2, 0.9, maps={"features.8": np.ones((2, 2))})},
                    geometry=None, roi=roi)
    build_site(tmp_path / "s", [img], SEEDS[:1], LAYERS[:1], display_height=400)
    path = read_maps_js(tmp_path / "s", "i00000")["roi"]
    assert path.startswith("M") and path.endswith("Z")
    xy = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path)]).reshape(-1, 2)
    # display is 400 x 400 (square without geometry): the mask scales by 2 vertically, 4 horizontally
    assert xy[:, 0].min() == pytest.approx(80, abs=2) and xy[:, 0].max() == pytest.approx(240, abs=2)
    assert xy[:, 1].min() == pytest.approx(100, abs=2) and xy[:, 1].max() == pytest.approx(300, abs=2)
    assert len(xy) < 20  # a rectangle, simplified: not one vertex per pixel


def test_site_replaces_its_own_folder_whole_and_refuses_any_other(tmp_path, phantom_images):
    out = tmp_path / "site"
    build_site(out, phantom_images, SEEDS, LAYERS)
    (out / "maps" / "stale.js").write_text("old")
    build_site(out, phantom_images[:2], SEEDS, LAYERS)
    assert not (out / "maps" / "stale.js").exists()
    assert len(read_data_js(out)["images"]) == 2
    assert json.loads((out / SITE_MARKER).read_text())["n_images"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders left

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by 'mammography explore'"):
        build_site(foreign, phantom_images, SEEDS, LAYERS)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_a_failed_build_leaves_the_previous_site_untouched(tmp_path, phantom_images):
    out = tmp_path / "site"
    build_site(out, phantom_images, SEEDS, LAYERS)
    before = (out / "data.js").read_bytes()
    bad = SiteImage("bad", 5, phantom_images[0].square, phantom_images[0].results)
    with pytest.raises(ConfigError, match="true class 5"):
        build_site(out, [*phantom_images, bad], SEEDS, LAYERS)
    assert (out / "data.js").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


@pytest.mark.parametrize(
    "results, message",
    [
        ({"seed99": SeedResult(1, 0.5)}, "unknown seeds"),
        ({"seed42": SeedResult(0, 0.5)}, "predicted class 0"),
        ({}, "no seed's result"),
    ],
)
def test_bad_records_are_refused_with_the_image_named(tmp_path, results, message):
    img = SiteImage("case_17.dcm", 2, np.zeros((SIZE, SIZE), np.float32), results)
    with pytest.raises(ConfigError, match=message) as info:
        build_site(tmp_path / "s", [img], SEEDS, LAYERS)
    assert "case_17.dcm" in str(info.value) or message == "unknown seeds"


def test_no_images_no_site(tmp_path):
    with pytest.raises(ConfigError, match="no images"):
        build_site(tmp_path / "s", [], SEEDS, LAYERS)
    assert not (tmp_path / "s").exists()


def test_site_is_served_on_loopback_only(site):
    out, _ = site
    server, url = start_server(out, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "index.html", timeout=10) as resp:
            assert resp.status == 200 and b'src="data.js"' in resp.read()
        with urllib.request.urlopen(url + "maps/i00000.js", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/javascript")
    finally:
        server.shutdown()
        server.server_close()


def test_serving_a_folder_without_a_site_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no index.html"):
        start_server(tmp_path, port=0)


def test_explore_command_needs_a_run(tmp_path, capsys):
    assert main(["explore", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--run" in err
    assert main(["explore", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "nope" in err
    assert not (tmp_path / "x").exists()


def test_layer_names_are_checked_and_stages_expanded():
    from mammography.web.data import resolve_layer_names, site_layers

    assert resolve_layer_names(["features.4,features.6", "features.8"]) == ["features.4", "features.6", "features.8"]
    assert resolve_layer_names(["stages"]) == [f"features.{i}" for i in range(9)]
    with pytest.raises(ConfigError, match="features.8"):
        resolve_layer_names(["feature.8"])
    # the switch shows the final block first, then deeper to shallower, then the fusion
    assert [x.key for x in site_layers(["features.4", "features.6", "features.8"])] == [
        "features.8", "features.6", "features.4", "fused"]
    assert [x.key for x in site_layers(["features.8"])] == ["features.8"]


def _raw_request(port: int, host: str | None) -> int:
    """Status of a GET / sent with the given Host header (None: no Host header)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/data.js", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_served_site_answers_only_loopback_host_names(site):
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 must not read data.js."""
    out, _ = site
    server, _ = start_server(out, port=0)
    port = server.server_port
    try:
        assert _raw_request(port, f"127.0.0.1:{port}") == 200
        assert _raw_request(port, f"localhost:{port}") == 200
        assert _raw_request(port, f"LOCALHOST:{port}") == 200
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
                     f"localhost.evil.example:{port}", None):
            assert _raw_request(port, host) == 403, host
    finally:
        server.shutdown()
        server.server_close()


def test_dropped_connections_print_no_traceback(tmp_path, capfd):
    import socket
    import struct
    import time

    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "data.js").write_bytes(bytes(20_000_000))  # still being sent when the client resets
    server, _ = start_server(tmp_path, port=0)
    try:
        for payload in (b"GET /data.js HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.server_port, b"GET /"):
            sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
            sock.sendall(payload)
            time.sleep(0.2)
            # close with a reset (SO_LINGER 0) while the server still answers or still reads
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
