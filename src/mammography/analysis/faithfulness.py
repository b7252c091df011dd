"""Faithfulness (deletion / insertion) and the weight-randomisation sanity check.

Deletion and insertion (Petsiuk et al., RISE, BMVC 2018)
-------------------------------------------------------
A heatmap ranks the pixels of the model input. *Deletion* replaces the
most-attended pixels first with a baseline value and records the model's
probability for the explained class after each step; a faithful map makes it
fall fast, so the area under the curve (AUC, fraction removed on the x axis)
is small. *Insertion* starts from the baseline image and puts the
most-attended pixels back first; a faithful map makes the probability rise
fast (large AUC). Both are compared with the same procedure in a random
order: the order of a random map of the heatmap's own resolution (seeded),
upsampled the same way, which is what a map without information would give.
(A random order of single pixels is not a fair reference: scattered black
pixels push the image out of the model's experience long before the same
number of pixels removed in blobs, so the random deletion curve would fall
fastest for the wrong reason.)

Only the image area of the square input is ranked (padding stays as it is).
The baseline is ``"zero"`` by default: the pixel becomes black, like the air
around the breast, which removes tissue rather than blurring it (a blurred
mammogram keeps its density, the low-frequency signal a density model
reads). ``"blur"`` (a Gaussian-blurred copy) and ``"mean"`` (the image
area's mean) are available. Images are processed one at a time, their
``n_steps + 1`` perturbed copies in batches of ``batch_size``.

Cascading randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018)
-------------------------------------------------------------------------------------------
The map of a model should depend on what the model learned. The head is
re-initialised, then the last blocks one after another (cumulatively), and
after each stage the maps for the *same* target classes are computed again
and compared with the original maps by Spearman rank correlation. A method
that passes shows correlations that fall towards 0; maps that stay highly
correlated are driven by the image, not by the model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mammography.analysis.consistency import rank_correlation
from mammography.analysis.maps import bootstrap_mean_ci
from mammography.errors import ConfigError

__all__ = [
    "BASELINES",
    "DEFAULT_CASCADE",
    "FaithfulnessResult",
    "SanityResult",
    "perturbation_curves",
    "faithfulness",
    "cam_explainer",
    "randomise_modules",
    "cascading_randomisation",
    "occlusion_probabilities",
    "marker_occlusion",
]

BASELINES = ("zero", "blur", "mean")
#: the head, then EfficientNet-B0's last blocks, deepest first
DEFAULT_CASCADE = ("classifier.1", "features.8", "features.7", "features.6")

#: explain(model, images (B, C, S, S), targets (B,) 0-based) -> maps (B, h, w)
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each curve (last axis) over ``fractions`` in [0, 1]."""
    return np.trapezoid(curves, fractions, axis=-1)


@dataclass
class FaithfulnessResult:
    """Deletion and insertion curves of a set of images.

    Attributes
    ----------
    fractions : (K + 1,) share of the image area removed / inserted at each step.
    deletion, insertion : (N, K + 1) probability of the explained class, in
        heatmap order.
    random_deletion, random_insertion : (N, K + 1) the same in the order of a
        random map of the heatmap's resolution.
    targets : (N,) explained class, 0-based.
    image_ids : identifiers of the images (paths), for the per-image table.
    baseline : the baseline used.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray
    targets: np.ndarray
    image_ids: list = field(default_factory=list)
    baseline: str = "zero"

    def aucs(self) -> dict[str, np.ndarray]:
        """Per-image AUCs: ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``, ``random_insertion_auc``."""
        return {
            "deletion_auc": _auc(self.fractions, self.deletion),
            "insertion_auc": _auc(self.fractions, self.insertion),
            "random_deletion_auc": _auc(self.fractions, self.random_deletion),
            "random_insertion_auc": _auc(self.fractions, self.random_insertion),
        }

    def table(self) -> pd.DataFrame:
        """One row per image: ``image_path, target`` (1..4) and the four AUCs."""
        ids = self.image_ids or [str(i) for i in range(len(self.targets))]
        return pd.DataFrame({"image_path": ids, "target": self.targets + 1, **self.aucs()})

    def summary(self, seed: int = 0) -> dict:
        """Mean AUCs (95 % bootstrap CIs), and how often the map beats the random order.

        ``deletion_better_rate``: share of images whose deletion AUC is below
        the random order's; ``insertion_better_rate``: above it.
        """
        a = self.aucs()
        out = {k: bootstrap_mean_ci(v, seed=seed).to_dict() for k, v in a.items()}
        n = len(self.targets)
        out["deletion_better_rate"] = float(np.mean(a["deletion_auc"] < a["random_deletion_auc"])) if n else math.nan
        out["insertion_better_rate"] = float(np.mean(a["insertion_auc"] > a["random_insertion_auc"])) if n else math.nan
        out["n_images"] = n
        out["n_steps"] = int(len(self.fractions) - 1)
        out["baseline"] = self.baseline
        return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = x[None]
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _upsample_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, *size), bilinear with pixel centres aligned (as the figures draw maps)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _order(heat: torch.Tensor, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``pixels`` (flat indices) sorted by decreasing ``heat``; a tiny seeded jitter breaks ties fairly."""
    values = heat.reshape(-1)[pixels] + 1e-9 * torch.rand(pixels.numel(), generator=gen)
    return pixels[torch.argsort(values, descending=True)]


def _baseline_image(image: torch.Tensor, area: torch.Tensor, baseline: str, zero_value: torch.Tensor) -> torch.Tensor:
    """The fully deleted version of one (C, S, S) input."""
    if baseline == "zero":
        return zero_value.view(-1, 1, 1).expand_as(image).clone()
    if baseline == "mean":
        mean = image[:, area].mean(dim=1) if area.any() else image.mean(dim=(1, 2))
        return mean.view(-1, 1, 1).expand_as(image).clone()
    return _gaussian_blur(image, sigma=image.shape[-1] / 32.0)


def _ranks(order: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """rank[p] = position of pixel p in ``order`` (pixels not in it: n_pixels, never reached)."""
    rank = torch.full((n_pixels,), n_pixels, dtype=torch.long)
    rank[order] = torch.arange(order.numel())
    return rank


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    image: torch.Tensor,
    order: torch.Tensor,
    target: int,
    *,
    n_steps: int = 20,
    baseline_image: torch.Tensor,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves of one image for one pixel order.

    Parameters
    ----------
    model : classifier returning logits; run in eval mode as given.
    image : (C, S, S) input, normalised as the model expects.
    order : (P,) flat pixel indices, most important first (the pixels that
        take part; others never change).
    target : class whose probability is recorded (0-based).
    n_steps : the curve has ``n_steps + 1`` points, 0 % .. 100 % of ``order``.
    baseline_image : (C, S, S) values deleted pixels take.
    batch_size : perturbed copies per forward pass.

    Returns
    -------
    (deletion, insertion): float64 arrays of ``n_steps + 1`` probabilities.
    """
    c, h, w = image.shape
    device = next(model.parameters()).device
    rank = _ranks(order.cpu(), h * w).view(h, w).to(device)
    counts = torch.round(torch.linspace(0, order.numel(), n_steps + 1)).long().to(device)
    x = image.to(device)
    base = baseline_image.to(device)
    curves = {"deletion": [], "insertion": []}
    for start in range(0, n_steps + 1, batch_size):
        k = counts[start : start + batch_size]
        changed = (rank[None] < k[:, None, None])[:, None]  # (b, 1, S, S)
        batch_del = torch.where(changed, base[None], x[None])
        batch_ins = torch.where(changed, x[None], base[None])
        batch = torch.cat([batch_del, batch_ins]).contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(model(batch).float(), dim=1)[:, target]
        curves["deletion"].append(probs[: len(k)].cpu())
        curves["insertion"].append(probs[len(k) :].cpu())
    return (
        torch.cat(curves["deletion"]).double().numpy(),
        torch.cat(curves["insertion"]).double().numpy(),
    )


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor | np.ndarray,
    targets: Sequence[int] | torch.Tensor,
    *,
    areas: torch.Tensor | np.ndarray | None = None,
    n_steps: int = 20,
    baseline: str = "zero",
    zero_value: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 16,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves in heatmap order and in a random order.

    Parameters
    ----------
    model : the classifier (switched to eval mode for the call, restored after).
    images : (N, C, S, S) inputs, normalised as the model expects.
    heatmaps : (N, h, w) maps of any resolution (upsampled bilinearly to S).
    targets : (N,) explained class per image, 0-based.
    areas : optional (N, S, S) bool, the image area of each square (padding
        excluded); default every pixel.
    n_steps : number of steps (curves have ``n_steps + 1`` points).
    baseline : one of :data:`BASELINES`.
    zero_value : (C,) the *normalised* value of a black pixel, i.e.
        ``-mean / std`` per channel (default 0).
    batch_size : perturbed copies per forward pass (2 x this many inputs go
        through the model at once).
    seed : seeds the random order and the tie-breaking jitter.
    image_ids : names for the per-image table.
    """
    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")
    if n_steps < 1:
        raise ConfigError(f"n_steps must be at least 1, got {n_steps}")
    images = torch.as_tensor(images, dtype=torch.float32)
    n, c, s, s2 = images.shape
    low = torch.as_tensor(np.asarray(heatmaps) if not isinstance(heatmaps, torch.Tensor) else heatmaps).float().cpu()
    if low.shape[0] != n:
        raise ConfigError(f"got {low.shape[0]} heatmaps for {n} images")
    gen = torch.Generator().manual_seed(int(seed))
    heat = _upsample_to(low, (s, s2))
    # the random order comes from a random map of the same resolution, upsampled the same way: it removes
    # blobs of the same size as the heatmap's, so the two curves differ only in *where* the blobs are
    # (scattered single pixels would fall out of the images' distribution much faster)
    random_heat = _upsample_to(torch.rand(low.shape, generator=gen), (s, s2))
    area = torch.ones((n, s, s2), dtype=torch.bool) if areas is None else torch.as_tensor(np.asarray(areas)).bool()
    tgt = torch.as_tensor(targets, dtype=torch.long).view(-1)
    zero = torch.zeros(c) if zero_value is None else torch.as_tensor(zero_value, dtype=torch.float32).view(-1)
    out = {k: [] for k in ("deletion", "insertion", "random_deletion", "random_insertion")}
    was_training = model.training
    model.eval()
    try:
        for i in range(n):
            pixels = torch.nonzero(area[i].view(-1)).view(-1)
            # tiny seeded jitter breaks ties of flat map regions without favouring any position
            order = _order(heat[i], pixels, gen)
            random_order = _order(random_heat[i], pixels, gen)
            base = _baseline_image(images[i], area[i], baseline, zero)
            kw = dict(n_steps=n_steps, baseline_image=base, batch_size=batch_size)
            d, ins = perturbation_curves(model, images[i], order, int(tgt[i]), **kw)
            rd, ri = perturbation_curves(model, images[i], random_order, int(tgt[i]), **kw)
            for k, v in zip(out, (d, ins, rd, ri)):
                out[k].append(v)
    finally:
        model.train(was_training)
    return FaithfulnessResult(
        fractions=np.linspace(0.0, 1.0, n_steps + 1),
        deletion=np.stack(out["deletion"]) if n else np.zeros((0, n_steps + 1)),
        insertion=np.stack(out["insertion"]) if n else np.zeros((0, n_steps + 1)),
        random_deletion=np.stack(out["random_deletion"]) if n else np.zeros((0, n_steps + 1)),
        random_insertion=np.stack(out["random_insertion"]) if n else np.zeros((0, n_steps + 1)),
        targets=tgt.numpy(),
        image_ids=list(image_ids) if image_ids is not None else [],
        baseline=baseline,
    )


@torch.no_grad()
def occlusion_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    fill_values: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Class probabilities after painting the masked pixels of each image with a fill value.

    Used to ask whether a prediction *depends* on a region (e.g. a burned-in
    marker): a CAM can miss a small region the model relies on (at 128 px
    EfficientNet-B0's last block is 4 x 4 cells), an occlusion cannot.

    Parameters
    ----------
    model : the classifier (eval mode for the call, restored after).
    images : (N, C, S, S) inputs, normalised as the model expects.
    masks : (N, S, S) bool, the pixels to paint.
    fill_values : (N, C) normalised value each image's painted pixels take
        (e.g. its background level).
    batch_size : images per forward pass.

    Returns
    -------
    (N, K) float64 probabilities.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    masks = torch.as_tensor(np.asarray(masks), dtype=torch.bool)
    fill = torch.as_tensor(np.asarray(fill_values), dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            m = masks[start : start + batch_size, None]
            v = fill[start : start + batch_size, :, None, None]
            # channels-last input: the faster convolution path on CPU and GPU (as in the CAM engine)
            painted = torch.where(m, v.expand_as(x), x).to(device).contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(model(painted).float(), dim=1).cpu().double())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def marker_occlusion(
    model: nn.Module,
    images: torch.Tensor,
    masks,
    backgrounds,
    mean,
    std,
    classes: np.ndarray,
    before: np.ndarray,
    *,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Does each prediction depend on the image's markers? Paint them with the image's background and look.

    Parameters
    ----------
    model : the classifier.
    images : (N, C, S, S) inputs, normalised as the model expects.
    masks : N (S, S) bool masks of the markers as the model saw them.
    backgrounds : N background levels in the model's pixel intensities (before normalisation).
    mean, std : the model's per-channel normalisation.
    classes : (N,) 0-based predicted class of each image.
    before : (N,) its probability before painting.
    batch_size : images per forward pass.

    Returns
    -------
    ``marker_occlusion_prob`` (the class's probability after painting),
    ``marker_occlusion_drop`` (before minus after) and
    ``marker_occlusion_flip`` (the predicted class changes), one value per image.
    """
    mean = torch.tensor(mean, dtype=torch.float32)
    std = torch.tensor(std, dtype=torch.float32)
    fill = torch.stack([(torch.full((3,), float(b)) - mean) / std for b in backgrounds])
    after = occlusion_probabilities(model, images, np.stack(masks), fill, batch_size=batch_size)
    classes = np.asarray(classes, dtype=int)
    p_after = after[np.arange(len(classes)), classes]
    return {"marker_occlusion_prob": p_after, "marker_occlusion_drop": before - p_after,
            "marker_occlusion_flip": after.argmax(axis=1) != classes}


# ---------------------------------------------------------------------------
# sanity check
# ---------------------------------------------------------------------------


def cam_explainer(method: str = "gradcam", layer: str | None = None, batch_size: int = 16) -> Explainer:
    """An :data:`Explainer` computing ``method`` maps at ``layer`` with :mod:`mammography.cam`."""
    from mammography.cam import create_cam

    def explain(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cam = create_cam(method, model, layer)
        maps = []
        for start in range(0, len(images), batch_size):
            res = cam(images[start : start + batch_size], targets[start : start + batch_size])
            maps.append(res.map().detach().cpu())
        return torch.cat(maps)

    return explain


def randomise_modules(model: nn.Module, names: Sequence[str], seed: int = 0) -> nn.Module:
    """Re-initialise every parameter of the named modules, in place, reproducibly.

    Each sub-module with a ``reset_parameters`` method (convolutions, linear
    layers, batch norms: their running statistics too) is reset with its
    default initialisation under a seeded RNG; the global RNG state is left
    untouched.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ConfigError(f"cannot randomise {unknown}: not modules of the model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name in names:
            for sub in modules[name].modules():
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
    return model


@dataclass
class SanityResult:
    """Outcome of a cascading randomisation.

    Attributes
    ----------
    stages : names of the modules randomised, cumulatively (stage ``k``
        randomises ``stages[:k + 1]``).
    correlations : (n_stages, N) Spearman rho of each image's map after the
        stage with its original map (NaN where a map became constant).
    max_correlation : the pass threshold on the final stage's mean rho.
    """

    stages: list[str]
    correlations: np.ndarray
    max_correlation: float = 0.5

    @property
    def mean_correlations(self) -> list[float]:
        """Mean rho per stage (NaN values left out)."""
        out = []
        for row in self.correlations:
            finite = row[np.isfinite(row)]
            out.append(float(finite.mean()) if finite.size else math.nan)
        return out

    @property
    def final_correlation(self) -> float:
        """Mean rho after the whole cascade (a constant map counts as rho 0)."""
        row = np.nan_to_num(self.correlations[-1], nan=0.0)
        return float(row.mean()) if row.size else math.nan

    @property
    def passed(self) -> bool:
        """True when randomising the model changed its maps (final mean rho below the threshold)."""
        return bool(self.final_correlation < self.max_correlation)

    def summary(self) -> dict:
        return {
            "stages": [
                {"randomised": "+".join(self.stages[: k + 1]), "mean_rank_correlation": m}
                for k, m in enumerate(self.mean_correlations)
            ],
            "final_rank_correlation": self.final_correlation,
            "max_correlation": self.max_correlation,
            "passed": self.passed,
            "n_images": int(self.correlations.shape[1]) if self.correlations.ndim == 2 else 0,
        }


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    m = maps.detach().float().cpu()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return m.numpy()


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    *,
    explain: Explainer | None = None,
    stages: Sequence[str] = DEFAULT_CASCADE,
    areas: torch.Tensor | np.ndarray | None = None,
    max_correlation: float = 0.5,
    seed: int = 0,
) -> SanityResult:
    """Randomise the head, then the last blocks, and measure how much the maps change.

    Parameters
    ----------
    model : the trained classifier; it is copied, never changed.
    images : (N, C, S, S) inputs, normalised as the model expects.
    targets : (N,) classes to explain (0-based), kept fixed across stages
        (usually the trained model's predictions).
    explain : :data:`Explainer`; default Grad-CAM at the model's last conv
        block (:func:`cam_explainer`).
    stages : module names randomised one after another, cumulatively.
    areas : optional (N, S, S) bool image areas; maps are compared there, at
        the input resolution.
    max_correlation : the check passes when the final mean rho is below this.
    seed : seeds the re-initialisation.
    """
    if not stages:
        raise ConfigError("the randomisation cascade needs at least one module name")
    explain = explain or cam_explainer()
    images = torch.as_tensor(images, dtype=torch.float32)
    tgt = torch.as_tensor(targets, dtype=torch.long).view(-1)
    size = tuple(images.shape[-2:])
    area = None if areas is None else np.asarray(areas, dtype=bool)
    device = next(model.parameters()).device
    work = copy.deepcopy(model).to(device).eval()
    original = _upsample(explain(work, images, tgt), size)
    rows = []
    for k, name in enumerate(stages):
        randomise_modules(work, [name], seed=seed + k)
        maps = _upsample(explain(work, images, tgt), size)
        rows.append(
            [
                rank_correlation(original[i], maps[i], None if area is None else area[i])
                for i in range(len(images))
            ]
        )
    return SanityResult(list(stages), np.asarray(rows, dtype=float), max_correlation)
