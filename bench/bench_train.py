"""Training and evaluation throughput of the density model, with and without the decoded-image cache.

Measured side by side in one run, on the CPU, on phantom DICOM files (a
share of them JPEG 2000 compressed, like real exports):

* data only       - decoding + fitting into the square, no model;
* train epoch     - forward + backward + AdamW step (channels_last), the
                    code path ``train-density`` runs;
* eval pass       - forward under ``inference_mode``.

Each is timed with no cache (every image decoded every time), with a cold
cache (the first epoch: decode and write the entry) and with a warm cache
(every later epoch and every later run). The ratio column compares each row
with the no-cache row of the same phase.

Usage::

    python bench/bench_train.py                      # 512 px, batch 8, 2 threads, 32 images 1024x832
    python bench/bench_train.py --images 64 --size 2048x1664 --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mammography.data.dataset import MammogramDataset
from mammography.models import build_density_model
from mammography.synth import generate_dataset
from mammography.training.train import _evaluate, _train_epoch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32, help="phantom images (rounded up to 4 per patient)")
    p.add_argument("--size", default="1024x832", help="phantom size HxW (the original DICOM size)")
    p.add_argument("--img-size", type=int, default=512, help="model input side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workdir", type=Path, help="keep the phantoms and cache here (default: a temp folder)")
    return p.parse_args()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    manifest = pd.read_csv(generate_dataset(work / "phantoms", n=args.images, seed=0, size=args.size))
    paths = [str(work / "phantoms" / p) for p in manifest["image_path"]]
    labels = manifest["density_label"].astype(int).tolist()
    n = len(paths)
    cache = work / "cache"
    device = torch.device("cpu")

    model = build_density_model().to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bar = tqdm(disable=True)

    def dataset(cache_dir):
        return MammogramDataset(paths, labels, img_size=args.img_size, cache_dir=cache_dir)

    def loader(ds, shuffle):
        return DataLoader(ds, batch_size=args.batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))

    def data_only(ds):
        for _ in loader(ds, False):
            pass

    def train(ds):
        _train_epoch(model, loader(ds, True), criterion, optimiser, device, bar)

    def evaluate(ds):
        _evaluate(model, loader(ds, False), criterion, device, bar)

    # warm-up: first oneDNN calls allocate and pick kernels; not part of any row
    warm = dataset(None)
    _train_epoch(model, [next(iter(loader(warm, False)))], criterion, optimiser, device, bar)

    rows = []
    for phase, run in (("data only", data_only), ("train epoch", train), ("eval pass", evaluate)):
        shutil.rmtree(cache, ignore_errors=True)
        cached = dataset(cache)
        for mode, ds in (("no cache", dataset(None)), ("cold cache", cached), ("warm cache", cached)):
            seconds = timed(lambda: run(ds))
            rows.append({"phase": phase, "cache": mode, "images": n, "seconds": seconds, "images/s": n / seconds})
    table = pd.DataFrame(rows)
    base = table[table["cache"] == "no cache"].set_index("phase")["images/s"]
    table["x vs no cache"] = table["images/s"] / table["phase"].map(base)
    print(
        f"\nEfficientNet-B0, {args.img_size} px input, batch {args.batch_size}, CPU, {args.threads} threads, "
        f"{n} phantom DICOM images of {args.size} px\n"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
