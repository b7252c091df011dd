"""A run's recomputed predictions and low-resolution maps in memory: :class:`RunMaps`.

What a sweep (:func:`mammography.cam.sweep.sweep_run`) computes, what a
stored record (:mod:`mammography.cam.record`) reads back as, and what every
command draws and measures from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mammography.cam.result import CAMResult, normalise_maps
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry

__all__ = ["RunMaps"]


@dataclass(eq=False)
class RunMaps:
    """Recomputed predictions and low-resolution CAMs of a run's validation images.

    Attributes
    ----------
    maps : layer -> float32 (N, h, w) raw maps (or (N, 4, h, w) for every class).
    logits, probs : float32 (N, 4), from the same forward pass.
    targets : int64 (N,) or (N, 4), 0-based classes explained.
    y_true : int64 (N,) BI-RADS labels 1..4.
    image_paths : N absolute paths, in ``val_predictions.csv`` order.
    geometries : one :class:`~mammography.io.geometry.Geometry` per image.
    method, target_mode : what was computed.
    run_id, run_path, checkpoint_sha256 : which checkpoint.
    preprocessing : the run's preprocessing record (``Preprocessing.to_record()``).
    autocast : mixed precision of the forward pass (``None`` = float32, ``"bf16"``, ``"fp16"``).
    errors : per image, empty or why it could not be explained (its
        probabilities are then NaN and its maps zero); empty list = none
        (a sweep stops at an unreadable image; an archive job records it).
    """

    maps: dict[str, np.ndarray]
    logits: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    y_true: np.ndarray
    image_paths: list[str]
    geometries: list[Geometry]
    method: str
    target_mode: str
    run_id: str
    run_path: str
    checkpoint_sha256: str
    preprocessing: dict = field(default_factory=dict)
    autocast: str | None = None
    errors: list[str] = field(default_factory=list)

    # -- views ------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.maps)

    @property
    def img_size(self) -> int:
        return int(self.preprocessing["img_size"])

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocessing["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.preprocessing["std"])

    @property
    def y_pred(self) -> np.ndarray:
        """(N,) recomputed predicted classes, 1..4."""
        return self.probs.argmax(axis=1).astype(np.int64) + 1

    @property
    def confidence(self) -> np.ndarray:
        """(N,) probability of the recomputed predicted class."""
        return self.probs.max(axis=1)

    def __len__(self) -> int:
        return len(self.image_paths)

    def metrics(self) -> dict:
        """``acc, kappa_quadratic, macro_f1, auc_ovr, bal_acc, bal_acc_adj`` of the
        recomputed predictions (float or None), as training computes them."""
        from mammography.training.metrics import SCALAR_METRICS, compute_metrics

        if not len(self):
            return {k: None for k in SCALAR_METRICS}
        full = compute_metrics(self.y_true, self.y_pred, self.probs.astype(np.float64))
        return {k: full[k] for k in SCALAR_METRICS}

    def provenance(self) -> dict:
        """What decides whether this record can stand for a new sweep."""
        return {
            "run_id": self.run_id,
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": self.preprocessing,
            "method": self.method,
            "layers": list(self.layers),
            "target_mode": self.target_mode,
            "autocast": self.autocast,
        }

    def normalised(self, layer: str | None = None) -> np.ndarray:
        """float32 maps of ``layer`` (default: the deepest) min-max normalised per image."""
        layer = layer or self.layers[-1]
        return normalise_maps(torch.from_numpy(np.ascontiguousarray(self.maps[layer]))).numpy()

    def result(self, indices: Sequence[int] | slice | None = None) -> CAMResult:
        """The maps (all, or the selected images) as a :class:`CAMResult` on the
        CPU, for its normalise / upsample / to_original / fuse helpers."""
        sel = slice(None) if indices is None else indices
        return CAMResult(
            maps={n: torch.from_numpy(np.ascontiguousarray(m[sel])) for n, m in self.maps.items()},
            logits=torch.from_numpy(np.ascontiguousarray(self.logits[sel])),
            probs=torch.from_numpy(np.ascontiguousarray(self.probs[sel])),
            targets=torch.from_numpy(np.ascontiguousarray(self.targets[sel])),
            method=self.method,
            input_size=(self.img_size, self.img_size),
        )

    # -- views of part of it ------------------------------------------------------
    def select(self, rows: Sequence[int]) -> "RunMaps":
        """The same maps for the images at positions ``rows`` (in that order)."""
        idx = np.asarray([int(r) for r in rows], dtype=np.int64)
        return replace(
            self,
            maps={name: m[idx] for name, m in self.maps.items()},
            logits=self.logits[idx], probs=self.probs[idx], targets=self.targets[idx], y_true=self.y_true[idx],
            image_paths=[self.image_paths[i] for i in idx], geometries=[self.geometries[i] for i in idx],
            errors=[self.errors[i] for i in idx] if self.errors else [],
        )

    def with_layers(self, layers: Sequence[str]) -> "RunMaps":
        """The same sweep holding only ``layers``, in that order (each must be in it)."""
        missing = [name for name in layers if name not in self.maps]
        if missing:
            raise ConfigError(f"the sweep of {self.run_id} has no maps of {', '.join(missing)} "
                              f"(it has {', '.join(self.layers)})")
        return replace(self, maps={name: self.maps[name] for name in layers})

    def for_run(self, run) -> "RunMaps":
        """This sweep under ``run``'s id and folder (a stored record of the same checkpoint and images)."""
        return replace(self, run_id=run.run_id, run_path=str(run.path))
