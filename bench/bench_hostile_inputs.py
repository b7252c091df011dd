"""Hostile and broken inputs: how many are handled in one line, whether any runs code, peak memory.

Builds the security audit's cases (``tests/_hostile.py``: crafted checkpoints,
DICOMs, run files, manifests, flags, unwritable outputs, hostile ``Host``
headers, dropped connections, commits killed at every step) in a temporary
folder and runs each through the library or the CLI (in-process), sorting the
outcome into

* ``handled``: a one-line error (a ``MammographyError``; exit status 2 with
  one stderr line from the CLI; 403 from the server; the old or the new pack
  after a kill);
* ``loaded``: a harmless input read as it should be;
* ``FAILED``: anything else (a traceback, a wrong acceptance, a mixed pack).

The code-running payloads create a marker file if any of them ever runs:
``executed`` counts those. Then, each in a fresh process, the peak memory
(``ru_maxrss`` above the process's own peak after its imports) of reading
the inflation cases (VmHWM, reset after the imports, minus the resident size
then): small files that claim or unpack to much more. With
``--baseline REV`` the same inflation cases are also run with the source of
git revision ``REV`` (e.g. the commit before the fixes), side by side.

Usage::

    python bench/bench_hostile_inputs.py [--baseline b0dd2f7]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import _hostile as hostile  # noqa: E402
from _interrupt import COMMIT_CHILD, run_until_paused  # noqa: E402

from mammography.cli import main  # noqa: E402
from mammography.errors import MammographyError  # noqa: E402

tally: Counter = Counter()
failures: list[str] = []


def expect_error(category: str, name: str, call) -> None:
    try:
        call()
    except MammographyError as exc:
        if "\n" in str(exc):
            failures.append(f"{category}/{name}: message of several lines")
            tally[category, "FAILED"] += 1
        else:
            tally[category, "handled"] += 1
        return
    except Exception as exc:  # noqa: BLE001 - what the bench is looking for
        failures.append(f"{category}/{name}: {type(exc).__name__}: {exc}"[:300])
        tally[category, "FAILED"] += 1
        return
    failures.append(f"{category}/{name}: accepted")
    tally[category, "FAILED"] += 1


def expect_loaded(category: str, name: str, call) -> None:
    try:
        call()
        tally[category, "loaded"] += 1
    except Exception as exc:  # noqa: BLE001
        failures.append(f"{category}/{name}: refused: {exc}"[:300])
        tally[category, "FAILED"] += 1


def expect_cli_error(category: str, argv: list[str], phrase: str = "") -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException as exc:  # noqa: BLE001
            code = f"{type(exc).__name__}: {exc}"
    text = err.getvalue()
    ok = code == 2 and text.count("\n") == 1 and "Traceback" not in text and phrase in text
    tally[category, "handled" if ok else "FAILED"] += 1
    if not ok:
        failures.append(f"{category}/{' '.join(argv)[:80]}: exit {code}: {text[-300:]}")


# --------------------------------------------------------------------------- the cases


def checkpoints(root: Path, marker: Path) -> None:
    from mammography.models.checkpoint import MAX_TENSOR_BYTES, load_checkpoint_state

    for name, path in hostile.code_checkpoints(root / "code", marker).items():
        expect_error("checkpoint: would run code", name, lambda p=path: load_checkpoint_state(p))
    inflating = {
        "zip bomb": hostile.zip_bomb_checkpoint(root / "bomb.pth", MAX_TENSOR_BYTES + (40 << 20)),
        "pickle bomb": hostile.pickle_bomb_checkpoint(root / "pbomb.pth", 64 << 20),
        "legacy claim": hostile.legacy_claim_checkpoint(root / "claim.pth", 1_500_000_000),
    }
    for name, path in inflating.items():
        expect_error("checkpoint: inflates", name, lambda p=path: load_checkpoint_state(p))
    for name, path in {**hostile.odd_weight_checkpoints(root / "odd"), **hostile.broken_checkpoints(root / "bad")}.items():
        expect_error("checkpoint: damaged or odd weights", name, lambda p=path: load_checkpoint_state(p))
    for kind in hostile.NON_REGULAR:
        path = hostile.non_regular(root / f"ckpt-{kind.replace(' ', '_')}.pth", kind)
        expect_error("checkpoint: not a regular file", kind, lambda p=path: load_checkpoint_state(p))
    for name, path in hostile.harmless_checkpoints(root / "ok").items():
        expect_loaded("checkpoint: harmless (must load)", name, lambda p=path: load_checkpoint_state(p))


def dicoms(root: Path) -> None:
    import numpy as np
    import pydicom

    from mammography.data.dataset import MammogramDataset
    from mammography.io import read_mammogram

    stored = (np.random.default_rng(0).random((48, 40)) * 4000).astype(np.uint16)
    base = hostile.mammogram_dicom(root / "base.dcm", stored, WindowCenter="2000", WindowWidth="3000",
                                   RescaleSlope="1", RescaleIntercept="0", ImageLaterality="L", ViewPosition="CC")
    data = base.read_bytes()
    end = data.find(b"\xe0\x7f\x10\x00") + 12
    mutated = root / "m.dcm"
    for i in range(128, end):
        mutated.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        try:
            read_mammogram(mutated)
            tally["dicom: one header byte flipped", "loaded"] += 1
        except MammographyError:
            tally["dicom: one header byte flipped", "handled"] += 1
        except Exception as exc:  # noqa: BLE001
            failures.append(f"dicom byte {i}: {type(exc).__name__}: {exc}"[:300])
            tally["dicom: one header byte flipped", "FAILED"] += 1
    at = data.find(b"\x28\x00\x10\x00US")
    (root / "vr.dcm").write_bytes(data[: at + 4] + b"UX" + data[at + 6:])
    expect_error("dicom: corrupt header", "VR", lambda: read_mammogram(root / "vr.dcm"))
    for keyword, value in (("RescaleSlope", "NaN"), ("RescaleIntercept", "inf"), ("WindowCenter", "nan"),
                           ("WindowWidth", "Infinity")):
        path = hostile.mammogram_dicom(root / f"{keyword}.dcm", stored, **{keyword: value})
        expect_error("dicom: non-finite value", keyword, lambda p=path: read_mammogram(p))
    lying = hostile.lying_rle_dicom(root / "lying.dcm", 7000, 7000)
    expect_error("dicom: size", "RLE data too small for its header", lambda: read_mammogram(lying))
    over = hostile.lying_rle_dicom(root / "over.dcm", 8000, 8000)
    expect_error("dicom: size", "above the pixel cap", lambda: read_mammogram(over))
    ds = pydicom.dcmread(base)
    ds.BitsAllocated = 64
    ds.save_as(root / "bits.dcm", enforce_file_format=True)
    expect_error("dicom: size", "BitsAllocated 64", lambda: read_mammogram(root / "bits.dcm"))
    for kind in hostile.NON_REGULAR:
        path = hostile.non_regular(root / f"img-{kind.replace(' ', '_')}.dcm", kind)
        expect_error("image: not a regular file", kind, lambda p=path: read_mammogram(p))
        dataset = MammogramDataset([path], img_size=64, cache_dir=root / "cache")
        expect_error("image: not a regular file (cache hash)", kind, lambda d=dataset: d[0])


def run_files(root: Path) -> None:
    from mammography.data import load_manifest
    from mammography.runs import load_run

    for i, (name, (summary, _)) in enumerate(hostile.ABSURD_SUMMARIES.items()):
        run = hostile.run_dir(root / f"s{i}", summary)
        expect_error("run: absurd summary value", name, lambda r=run: load_run(r))
    for i, kind in enumerate(hostile.HOSTILE_SUMMARY_KINDS):
        run = hostile.run_dir(root / f"h{i}")
        hostile.hostile_summary(run, kind)
        expect_error("run: hostile summary.json", kind, lambda r=run: load_run(r))
    for i, kind in enumerate(hostile.HOSTILE_PREDICTION_KINDS):
        run = hostile.run_dir(root / f"p{i}")
        hostile.hostile_predictions(run, kind)
        expect_error("run: hostile val_predictions.csv", kind, lambda r=run: load_run(r))
    fifo = root / "fifo.csv"
    os.mkfifo(fifo)
    (root / "nul.csv").write_text("image_path,density_label\nimg\x00.dcm,2\n")
    with open(root / "huge.csv", "wb") as fh:
        fh.truncate(2 << 30)
    for name in ("fifo.csv", "nul.csv", "huge.csv"):
        expect_error("manifest: hostile", name, lambda n=name: load_manifest(root / n))


def command_lines(root: Path) -> None:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for argv, phrase in hostile.ABSURD_PARAMETERS:
            expect_cli_error("cli: absurd parameter", argv, phrase)
        run = hostile.run_dir(root / "cli")
        blocker = root / "blocker"
        blocker.write_text("x")
        (root / "md_folder").mkdir()
        for command in hostile.UNWRITABLE_COMMANDS:
            expect_cli_error("cli: unwritable output (before the model)",
                             hostile.unwritable_output_argv(command, run, blocker, root / "md_folder"))
    finally:
        os.chdir(cwd)


def server(root: Path) -> None:
    from mammography.web.serve import start_server

    (root / "site").mkdir()
    (root / "site" / "index.html").write_text("<html></html>")
    (root / "site" / "data.js").write_bytes(bytes(20_000_000))
    srv, _ = start_server(root / "site", port=0)
    port = srv.server_port
    try:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
                     f"localhost.evil.example:{port}", None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", "/data.js", skip_host=True)
            if host is not None:
                conn.putheader("Host", host)
            conn.endheaders()
            status = conn.getresponse().status
            conn.close()
            tally["serve: foreign Host header", "handled" if status == 403 else "FAILED"] += 1
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            for payload in (b"GET /data.js HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port, b"GET /"):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(payload)
                time.sleep(0.2)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            time.sleep(0.5)
        ok = "Traceback" not in err.getvalue()
        tally["serve: dropped connection", "handled" if ok else "FAILED"] += 2
    finally:
        srv.shutdown()
        srv.server_close()


def interruptions(root: Path) -> dict:
    """A pack of 4 files replacing a pack of 4 (one stale), killed before every commit step."""
    import hashlib
    import shutil

    from mammography.atomic import OutputLock

    def files(folder: Path) -> dict:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".mmlock")}

    def write(folder: Path, names: dict) -> None:
        manifest = {"assets": [{"path": n, "sha256": hashlib.sha256(d).hexdigest()} for n, d in names.items()]}
        for name, data in {**names, "manifest.json": json.dumps(manifest).encode()}.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    pristine, staged, out = root / "old", root / "new", root / "out"
    write(pristine, {"a.png": b"A1", "gone.png": b"B1", "c.png": b"C1"})
    write(staged, {"a.png": b"A2", "c.png": b"C2", "e.png": b"E2"})
    order = ["a.png", "c.png", "e.png", "manifest.json"]
    spec = root / "spec.json"
    spec.write_text(json.dumps({"folders": [str(out)], "files": [], "trees": [],
                                "add": [[str(out / n), str(staged / n)] for n in order],
                                "remove": [[str(out / "gone.png"), str(out)]]}))
    old, new = files(pristine), files(staged)
    outcome = Counter()
    for step in range(100):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        if not run_until_paused(COMMIT_CHILD, [str(spec)], step):
            break
        with OutputLock(folders=[out]):
            pass
        state = files(out)
        outcome["old" if state == old else "new" if state == new else "MIXED"] += 1
    tally["kill -9 at every commit step", "handled"] += outcome["old"] + outcome["new"]
    tally["kill -9 at every commit step", "FAILED"] += outcome["MIXED"]
    return dict(outcome)


# --------------------------------------------------------------------------- peak memory


MEMORY_CHILD = """
import sys, warnings
warnings.simplefilter("ignore")
kind, path = sys.argv[1], sys.argv[2]
from mammography.io import read_mammogram
from mammography.models.checkpoint import load_checkpoint_state

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
base = status("VmRSS:")
try:
    result = (read_mammogram if kind == "dicom" else load_checkpoint_state)(path)
    outcome = "read"
except Exception as exc:
    outcome = type(exc).__name__
print(f"{status('VmHWM:') - base:.0f}\\t{outcome}")
"""


def memory_cases(root: Path) -> dict[str, tuple[str, Path]]:
    from pydicom.uid import RLELossless

    return {
        "checkpoint zip bomb (claims 1.5 GB)": ("checkpoint",
                                               hostile.zip_bomb_checkpoint(root / "bomb15.pth", 1_500_000_000)),
        "checkpoint deflated pickle (200 MB)": ("checkpoint",
                                                hostile.pickle_bomb_checkpoint(root / "pbomb200.pth", 200_000_000)),
        "legacy checkpoint claiming 1.5 GB": ("checkpoint",
                                              hostile.legacy_claim_checkpoint(root / "claim15.pth", 1_500_000_000)),
        "RLE DICOM 10000 x 10000 (100 MP)": ("dicom", _rle(root / "rle10000.dcm", 10_000, RLELossless)),
        "RLE DICOM 64x64 data, header 7000 x 7000": ("dicom", hostile.lying_rle_dicom(root / "lying.dcm", 7000, 7000)),
        "RLE DICOM 7000 x 7000 (49 MP, at the cap)": ("dicom", _rle(root / "rle7000.dcm", 7_000, RLELossless)),
    }


def _rle(path: Path, side: int, syntax) -> Path:
    import numpy as np

    image = np.zeros((side, side), dtype=np.uint16)
    image[: side // 2] = 3000
    from test_io_dicom import make_dataset

    ds = make_dataset(image, RescaleSlope="1", RescaleIntercept="0")  # float64 modality values, the worst case
    try:
        ds.compress(syntax, encoding_plugin="pylibjpeg")
    except Exception:  # noqa: BLE001 - the plugin is optional; pydicom's own encoder is slower
        ds.compress(syntax, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


def measure(kind: str, path: Path, src: Path | None) -> str:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, kind, str(path)], capture_output=True, text=True,
                         env=env, timeout=900)
    return out.stdout.strip() or f"?\tcrashed: {out.stderr.strip().splitlines()[-1:]}"


def baseline_source(rev: str, root: Path) -> Path:
    target = root / f"src-{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="also measure the inflation cases with this git revision")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        marker = root / "PWNED"
        t0 = time.perf_counter()
        for part, run in (("checkpoints", lambda: checkpoints(root / "ck", marker)), ("dicom", lambda: dicoms(root / "dcm")),
                          ("runs", lambda: run_files(root / "runs")), ("cli", lambda: command_lines(root / "cli")),
                          ("serve", lambda: server(root / "serve"))):
            (root / {"checkpoints": "ck", "dicom": "dcm", "runs": "runs", "cli": "cli", "serve": "serve"}[part]).mkdir()
            run()
        (root / "kill").mkdir()
        kills = interruptions(root / "kill")
        categories = sorted({c for c, _ in tally})
        print(f"{'case':52s} {'tried':>6s} {'handled':>8s} {'loaded':>7s} {'FAILED':>7s}")
        for category in categories:
            counts = [tally[category, k] for k in ("handled", "loaded", "FAILED")]
            print(f"{category:52s} {sum(counts):6d} {counts[0]:8d} {counts[1]:7d} {counts[2]:7d}")
        total = {k: sum(v for (c, kk), v in tally.items() if kk == k) for k in ("handled", "loaded", "FAILED")}
        print(f"{'total':52s} {sum(total.values()):6d} {total['handled']:8d} {total['loaded']:7d} {total['FAILED']:7d}")
        print(f"executed (marker file created by a payload): {int(marker.exists())}")
        print(f"kill -9 before each commit step: {kills}")
        print(f"cases run in {time.perf_counter() - t0:.0f} s")
        for line in failures:
            print("FAILED:", line)

        print("\npeak memory of reading the file (MB above the resident size after imports), each in a fresh process")
        src = baseline_source(args.baseline, root) if args.baseline else None
        header = f"{'inflation case':44s} {'file MB':>8s} {'peak MB':>8s}  outcome"
        print(header if src is None else header + f"   | {args.baseline}: peak MB  outcome")
        for name, (kind, path) in memory_cases(root / "mem" if (root / "mem").mkdir() is None else root).items():
            now = measure(kind, path, None).split("\t")
            line = f"{name:44s} {path.stat().st_size / 1e6:8.2f} {now[0]:>8s}  {now[-1]}"
            if src is not None:
                then = measure(kind, path, src).split("\t")
                line += f"   | {then[0]:>8s}  {then[-1]}"
            print(line)


if __name__ == "__main__":
    main_bench()
