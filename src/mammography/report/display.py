"""What report-pack's figures show: the chosen images as tiles of the original mammogram with its heatmap.

Tiles show the original image (decoded again, downsampled to at most 1024 px,
in its own orientation) with the heatmap mapped back through the image's
``Geometry``, so the whole breast is shown, unflipped and not squashed.
:func:`grid_rows` builds a class-grid figure's rows, :func:`layer_rows` the
layer-wise figure's (the layers' maps come from the run's sweep; the fused
row combines them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mammography.analysis.selection import ClassSelection, select_per_class
from mammography.report.captions import CLASSES, class_header, patient_groups
from mammography.report.figures import GridRow
from mammography.report.overlay import DisplayTile

__all__ = ["DisplayImages", "grid_rows", "layer_rows", "select_examples"]


class DisplayImages:
    """Original mammograms for drawing, decoded once per pack and downsampled.

    Tiles and overlays show the original pixels (original orientation, whole
    image, aspect kept) rather than the low-resolution model input, with the
    heatmap mapped back through the image's :class:`~mammography.io.geometry.Geometry`.
    Runs that share validation images (seeds on one split) decode each image once.

    Parameters
    ----------
    max_side : longest side of a display image in pixels (the figure tiles are
        about 250 px wide at 300 dpi; per-sample overlays use this size).
    """

    def __init__(self, max_side: int = 1024):
        self.max_side = int(max_side)
        self._images: dict[str, np.ndarray] = {}

    def image(self, path: str) -> np.ndarray:
        """float32 (h, w) in [0, 1], dense = bright, the long side at most ``max_side``."""
        if path not in self._images:
            from mammography.io import read_mammogram

            pixels = np.asarray(read_mammogram(path).pixels, dtype=np.float32)
            self._images[path] = _downsample(pixels, self.max_side)
        return self._images[path]

    def tile(self, ev, i: int, heatmap: np.ndarray | None = None) -> DisplayTile:
        """Display tile of validation image ``i`` of ``ev`` (an
        :class:`~mammography.report.evaluate.EvaluatedRun`) with its (or the given) low-resolution heatmap."""
        path = str(ev.dataset.paths[i])
        image = self.image(path)
        geometry = dataclasses.replace(ev.geometry(i), original_shape=tuple(image.shape))
        hm = geometry.to_original(ev.maps[i] if heatmap is None else heatmap)
        visible = geometry.visible_original() if geometry.crops else None
        return DisplayTile(image=image, heatmap=np.clip(hm, 0.0, 1.0), y_true=int(ev.y_true[i]),
                           y_pred=int(ev.y_pred[i]), confidence=float(ev.probs[i, ev.y_pred[i] - 1]),
                           image_path=path, visible=visible)


def _downsample(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Antialiased resize so the longer side is at most ``max_side`` (aspect kept)."""
    h, w = pixels.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp(0.0, 1.0).numpy()


def select_examples(ev, options) -> dict[int, ClassSelection]:
    """The validation images a run's class grid shows, per true class (``options.select``, ``per_class``)."""
    seed = ev.run.seed if ev.run.seed is not None else 0
    return select_per_class(ev.y_true, ev.y_pred, ev.probs, ev.run.predictions["image_path"].astype(str),
                            per_class=options.per_class, strategy=options.select, seed=seed, classes=CLASSES,
                            groups=patient_groups(ev.run.predictions))


def grid_rows(ev, selection: dict[int, ClassSelection], images: DisplayImages) -> tuple[list[GridRow], dict]:
    """Class-grid rows (one per class) and, per class, the ``(index, tile)`` pairs shown."""
    rows, tiles = [], {}
    for label in CLASSES:
        sel = selection[label]
        cells = [images.tile(ev, i) for i in sel.indices]
        tiles[label] = list(zip(sel.indices, cells))
        note = sel.note if (sel.shortfall and sel.available) else ""
        rows.append(GridRow(header=class_header(label), cells=cells, note=note,
                            message="no validation images" if not sel.available else "", key=label))
    return rows, tiles


def layer_rows(ev, selection, options, images: DisplayImages) -> tuple[list[GridRow], list[str]]:
    """Rows = the pack's layers + fused, columns = the first selected image of each class.

    The layers' maps are the run's sweep (each map computed once); the fused
    row is ``options.fuse`` of their normalised maps.
    """
    names = options.layer_names()
    picks = {label: selection[label].indices[0] for label in CLASSES if selection[label].indices}
    order = [picks[label] for label in CLASSES if label in picks]
    layer_maps: dict[str, np.ndarray] = {}
    if order:
        res = ev.sweep.with_layers(names).result(order)
        layer_maps = {n: m.numpy() for n, m in res.normalise().maps.items()}
        layer_maps["fused"] = res.fuse(options.fuse).map("fused").numpy()
    row_names = names + ["fused"]
    rows = []
    for r, name in enumerate(row_names):
        cells = []
        for label in CLASSES:
            if label not in picks:
                cells.append("no validation images")
                continue
            j = order.index(picks[label])
            cells.append(images.tile(ev, picks[label], heatmap=layer_maps[name][j]))
        header = f"fused ({options.fuse} of {', '.join(names)})" if name == "fused" else name
        rows.append(GridRow(header=header, cells=cells, show_labels=(r == len(row_names) - 1), key=name))
    return rows, names
