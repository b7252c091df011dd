"""Tests of the Grad-CAM engine (mammography.cam).

The model is a real EfficientNet-B0 (``weights=None``) whose BatchNorm
statistics were re-estimated on structured images, so logits and gradients
are far from zero (a random init gives logits near 1e-14 and maps that
compare badly). Inputs are 128 px: features.4 is 8x8, features.6 and
features.8 are 4x4.

The reference activations and gradients come from an independent path: a
float64 copy of the model, a full autograd graph from the input, and hooks
that add a zero tensor ``delta`` to each target output, so dScore/dA is
dScore/d(delta). The formulas are written again in numpy below.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammography.cam import (
    METHODS,
    CAMResult,
    GradCAM,
    HiResCAM,
    LayerCAM,
    create_cam,
    default_layer_name,
    fuse_maps,
    normalise_maps,
    resolve_layers,
    stage_names,
)
from mammography.cam.base import _LeanBackward, _Recompute
from mammography.errors import ConfigError
from mammography.io.geometry import compute_geometry
from mammography.models import build_density_model

SIZE = 128
LAYERS = ["features.4", "features.6", "features.8"]


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def structured_images(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Gaussian blobs at random places plus noise, 3 identical channels."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        r = 0.15 + 0.3 * float(torch.rand(1, generator=g))
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = 2.5 * blob - 1 + 0.3 * torch.randn(size, size, generator=g)
        out.append(img.expand(3, size, size))
    return torch.stack(out).contiguous()


def bn_reestimated_model(seed: int = 0) -> nn.Module:
    """EfficientNet-B0 density model with BatchNorm statistics of structured images."""
    torch.manual_seed(seed)
    model = build_density_model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for s in range(2):
            model(structured_images(8, SIZE, seed=100 + s))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return bn_reestimated_model()


@pytest.fixture(scope="module")
def model64(model) -> nn.Module:
    return copy.deepcopy(model).double().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return structured_images(3, SIZE, seed=1)


# ---------------------------------------------------------------------------
# independent reference
# ---------------------------------------------------------------------------


def reference_acts_grads(model64: nn.Module, x: torch.Tensor, layers, targets):
    """float64 activations and dScore/dA via a plain full-graph autograd pass."""
    acts, deltas = {}, {}

    def make_hook(name):
        def hook(module, inputs, output):
            acts[name] = output.detach().clone()
            delta = torch.zeros_like(output, requires_grad=True)
            deltas[name] = delta
            return output + delta

        return hook

    handles = [model64.get_submodule(n).register_forward_hook(make_hook(n)) for n in layers]
    try:
        logits = model64(x.double())
    finally:
        for h in handles:
            h.remove()
    t = torch.as_tensor(targets)
    score = logits[torch.arange(len(x)), t].sum()
    grads = torch.autograd.grad(score, [deltas[n] for n in layers])
    return (
        {n: acts[n].numpy() for n in layers},
        {n: g.numpy() for n, g in zip(layers, grads)},
        logits.detach().numpy(),
    )


def formula(method: str, A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The CAM formulas in float64 numpy, (B, C, h, w) -> (B, h, w).

    Grad-CAM++ and XGrad-CAM in the forms of ``mammography.cam.methods``: the
    papers' closed forms where the channel sum S is well posed, bounded where
    signed activations would put a pole in them (S < 0 for Grad-CAM++, S near
    zero for XGrad-CAM).
    """
    S = A.sum(axis=(2, 3))
    if method == "gradcam":
        w = G.mean(axis=(2, 3))
    elif method == "gradcam++":
        g2, g3 = G**2, G**3
        s = np.maximum(S, 0)[:, :, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            alpha = np.where(G != 0, g2 / (2 * g2 + s * g3), 0.0)  # eq. 19 as printed
        w = (alpha * np.maximum(G, 0)).sum(axis=(2, 3))
    elif method == "xgradcam":
        M = np.abs(A).sum(axis=(2, 3))
        w = (G * A).sum(axis=(2, 3)) * S / np.maximum(S**2, (0.1 * M) ** 2)
    if method in ("gradcam", "gradcam++", "xgradcam"):
        cam = np.einsum("bc,bchw->bhw", w, A)
    elif method == "hirescam":
        cam = (G * A).sum(axis=1)
    elif method == "layercam":
        cam = (np.maximum(G, 0) * A).sum(axis=1)
    else:  # pragma: no cover
        raise AssertionError(method)
    return np.maximum(cam, 0)


def minmax(a: np.ndarray) -> np.ndarray:
    """Per-map min-max over the last two axes (written independently of the library)."""
    lo = a.min(axis=(-2, -1), keepdims=True)
    hi = a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo)


# ---------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------


def test_model_fixture_is_not_degenerate(model, images):
    with torch.no_grad():
        logits = model(images)
    assert logits.abs().max() > 1e-3  # a random init gives ~1e-14


STAGES = [f"features.{i}" for i in range(9)]
STAGE_TARGETS = [0, 2, 3]


@pytest.fixture(scope="module")
def stage_reference(model64, images):
    """float64 activations and gradients at every stage, from the independent path."""
    A, G, _ = reference_acts_grads(model64, images, STAGES, STAGE_TARGETS)
    return A, G


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over each map, relative to that map's maximum |ref|."""
    scale = np.abs(ref).max(axis=(-2, -1), keepdims=True)
    return float((np.abs(got - ref) / scale).max())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_matches_its_float64_formula_at_every_stage(method, model, model64, images, stage_reference):
    """Signed activations (features.0-7 are BatchNorm/SiLU outputs) put poles in the
    literal Grad-CAM++ and XGrad-CAM formulas, where float32 maps were noise (up to
    1.0 from float64 after normalisation); every method must now be exact to float32
    precision at every stage."""
    A, G = stage_reference
    # the engine on the float64 model: the formula to float32 output precision
    res64 = create_cam(method, model64, "stages")(images, targets=STAGE_TARGETS)
    # the engine on the float32 model: what users run
    res32 = create_cam(method, model, "stages")(images, targets=STAGE_TARGETS)
    assert res32.method == method
    assert res32.targets.tolist() == STAGE_TARGETS
    for layer in STAGES:
        ref = formula(method, A[layer], G[layer])
        assert (ref.max(axis=(1, 2)) > 0).all(), layer
        got64 = res64[layer].numpy()
        got32 = res32[layer].numpy()
        assert got32.dtype == np.float32 and got32.shape == ref.shape
        np.testing.assert_allclose(got64, ref, rtol=1e-6, atol=1e-6 * ref.max(), err_msg=layer)
        assert relative_error(got32, ref) < 1e-4, layer
        np.testing.assert_allclose(minmax(got32), minmax(ref), atol=1e-4, err_msg=layer)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batch_equals_per_image_at_every_stage(method, model, images):
    """Batched convolutions round differently from single-image ones (~1e-7); a method
    must not amplify that (the literal Grad-CAM++ gave batch maps 1.0x the maximum
    away from the per-image ones at features.1)."""
    cam = create_cam(method, model, "stages")
    batch = cam(images, targets=STAGE_TARGETS)
    singles = [cam(images[i : i + 1], targets=STAGE_TARGETS[i : i + 1]) for i in range(len(images))]
    for layer in STAGES:
        one_by_one = torch.cat([r[layer] for r in singles]).numpy()
        assert relative_error(batch[layer].numpy(), one_by_one) < 1e-4, layer


def test_gradcam_plus_plus_and_xgradcam_stay_bounded_on_signed_activations():
    """A channel whose activations sum to -2 / G (Grad-CAM++'s pole) or cancel to
    zero (XGrad-CAM's): the weights stay finite and move by O(perturbation)."""
    from mammography.cam.methods import GradCAMPlusPlus, XGradCAM

    A = torch.tensor([[[[1.0, -3.0], [0.5, -0.5]], [[2.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)  # S = -2, 4
    G = torch.full_like(A, 1.0)  # S * G = -2 on channel 0: the literal alpha divides by zero
    for method in (GradCAMPlusPlus, XGradCAM):
        base = method.compute_maps(None, A, G)
        nudged = method.compute_maps(None, A * (1 + 1e-7), G * (1 - 1e-7))
        assert torch.isfinite(base).all()
        assert (nudged - base).abs().max() < 1e-5 * base.abs().max()
    # channel 0 of Grad-CAM++: S < 0 is clamped to 0, so alpha = 1/2 and w = sum ReLU(G) / 2
    w = GradCAMPlusPlus.compute_maps(None, A[:, :1], G[:, :1])
    torch.testing.assert_close(w, 2.0 * A[0, :1].sum(0, keepdim=True))
    # XGrad-CAM on a channel that sums to exactly zero: weight 0
    zero_sum = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]], dtype=torch.float64)
    assert XGradCAM.compute_maps(None, zero_sum, torch.rand_like(zero_sum)).abs().max() == 0


@pytest.mark.parametrize(
    "layers", [["features.0.1"], ["features.0.0", "features.0.1"], ["features.1", "features.2.1.block"]]
)
def test_layers_modified_in_place_downstream(layers, model64, images):
    """features.0.1 (BatchNorm) is followed by an in-place SiLU; the output of
    features.2.1.block receives MBConv's in-place residual ``+=``. The maps must
    use the layer's own output and its own gradient, both when the layer is the
    first target (its output becomes the graph's leaf) and when a shallower
    target comes first (its output is inside the recorded graph)."""
    targets = [1, 1, 2]
    A, G, _ = reference_acts_grads(model64, images, layers, targets)
    res = GradCAM(model64, layers)(images, targets=targets)
    for layer in layers:
        ref = formula("gradcam", A[layer], G[layer])
        np.testing.assert_allclose(res[layer].numpy(), ref, rtol=1e-6, atol=1e-6 * ref.max())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layer", LAYERS)
def test_gradcam_matches_grad_cam_package(layer, batch, model, images):
    """Compare with ``pytorch_grad_cam.GradCAM`` (grad-cam 1.5.7).

    Two resolutions are compared:
    * the feature-map resolution: the package's own weighting
      (``get_cam_image``) of the activations and gradients its hooks
      recorded during its ``loss.backward()``, then ReLU, then the same
      min-max on both sides;
    * the input resolution: the package's final output against ours
      normalised, upsampled bilinearly (align_corners=False, OpenCV's pixel
      convention) and normalised again: the package min-maxes each layer's map
      (1e-7 epsilon), resizes it with ``cv2.resize`` and min-maxes the resized
      map once more when it aggregates layers. Bilinear upsampling rarely
      reaches the grid maximum, so that second step rescales by a few percent.
    """
    from pytorch_grad_cam import GradCAM as PackageGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = images[:batch]
    ours = GradCAM(model, layer)(x)  # predicted class
    targets = ours.targets.tolist()

    pkg_model = copy.deepcopy(model)
    with PackageGradCAM(model=pkg_model, target_layers=[pkg_model.get_submodule(layer)]) as pkg:
        full = pkg(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in targets])
        acts = pkg.activations_and_grads.activations[0].numpy()
        grads = pkg.activations_and_grads.gradients[0].numpy()
        low = np.maximum(pkg.get_cam_image(x, None, None, acts, grads), 0)

    assert low.shape == tuple(ours[layer].shape)
    np.testing.assert_allclose(normalise_maps(ours[layer]).numpy(), minmax(low), atol=1e-4)
    ours_full = ours.normalise().upsample().normalise()[layer].numpy()
    assert ours_full.shape == full.shape == (batch, SIZE, SIZE)
    np.testing.assert_allclose(ours_full, full, atol=1e-4)


def package_low_res_maps(method: str, model: nn.Module, layer: str, x: torch.Tensor, targets) -> np.ndarray:
    """The ``grad-cam`` package's map at the layer's resolution (its own hooks, its own
    ``loss.backward()``, its own weighting), ReLU applied, before any resizing."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
               "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM}
    pkg_model = copy.deepcopy(model)
    with classes[method](model=pkg_model, target_layers=[pkg_model.get_submodule(layer)]) as pkg:
        pkg(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in targets])
        acts = pkg.activations_and_grads.activations[0].numpy()
        grads = pkg.activations_and_grads.gradients[0].numpy()
        return np.maximum(pkg.get_cam_image(x, None, None, acts, grads, False), 0)


@pytest.mark.parametrize("method", ["hirescam", "layercam"])
@pytest.mark.parametrize("layer", ["features.4", "features.8"])
def test_methods_match_grad_cam_package_on_efficientnet(method, layer, model, images):
    """HiResCAM and LayerCAM are defined alike here and in the package (Grad-CAM: see above)."""
    ours = create_cam(method, model, layer)(images)
    low = package_low_res_maps(method, model, layer, images, ours.targets.tolist())
    np.testing.assert_allclose(normalise_maps(ours[layer]).numpy(), minmax(low), atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_plus_plus_and_xgradcam_match_grad_cam_package_on_relu_activations(method, layer):
    """Where the package's definitions and ours agree: non-negative activations (ResNet
    stages end in a ReLU) and, for Grad-CAM++, gradients large enough that the
    package's 1e-6 in the denominator is negligible (G^2 >> 1e-6: a confident head,
    logits x 1000). On EfficientNet-B0's signed activations the package's formulas
    have poles and ours are bounded (see mammography.cam.methods)."""
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    with torch.no_grad():
        m.fc.weight.mul_(1000)
    x = structured_images(3, SIZE, seed=4)
    ours = create_cam(method, m, layer)(x)
    low = package_low_res_maps(method, m, layer, x, ours.targets.tolist())
    assert low.shape == tuple(ours[layer].shape)
    np.testing.assert_allclose(normalise_maps(ours[layer]).numpy(), minmax(low), atol=1e-4)


def test_final_layer_gradcam_is_classic_cam(model64, images):
    """EfficientNet-B0's head is features.8 -> global average pool -> dropout ->
    Linear, so dS_c/dA_k = W_ck / (h w) and Grad-CAM = ReLU(sum_k W_ck A_k) / (h w):
    the classic CAM of Zhou et al. 2016 (up to the 1/(h w) scale)."""
    res = GradCAM(model64, "features.8")(images, targets="all")
    A, _, _ = reference_acts_grads(model64, images, ["features.8"], [0, 0, 0])
    W = model64.classifier[1].weight.detach().numpy()  # (K, 1280)
    a = A["features.8"]
    classic = np.einsum("kc,bchw->bkhw", W, a)
    h, w = a.shape[-2:]
    expected = np.maximum(classic, 0) / (h * w)
    got = res["features.8"].numpy()
    assert got.shape == expected.shape == (3, 4, h, w)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * expected.max())


def test_maps_are_class_discriminative_and_all_matches_single(model, images):
    cam = GradCAM(model, LAYERS)
    res_all = cam(images, targets="all")
    assert res_all.all_classes
    assert res_all.targets.tolist() == [[0, 1, 2, 3]] * 3
    for layer in LAYERS:
        maps = normalise_maps(res_all[layer])  # (B, K, h, w)
        for b in range(3):
            for i in range(4):
                for j in range(i + 1, 4):
                    assert (maps[b, i] - maps[b, j]).abs().max() > 0.05, (layer, b, i, j)
    # the one-forward "all" result equals one call per class
    for k in range(4):
        single = cam(images, targets=k)
        picked = res_all.for_class(k)
        for layer in LAYERS:
            torch.testing.assert_close(picked[layer], single[layer], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res_all.logits, single.logits)


def test_targets_forms(model, images):
    cam = GradCAM(model)
    pred = cam(images)
    assert pred.targets.tolist() == pred.logits.argmax(1).tolist()
    assert pred.predictions.tolist() == pred.targets.tolist()
    torch.testing.assert_close(pred.probs, torch.softmax(pred.logits, 1))
    per_image = cam(images, targets=torch.tensor([3, 0, 1]))
    assert per_image.targets.tolist() == [3, 0, 1]
    same = cam(images, targets=[3, 0, 1])
    torch.testing.assert_close(same["features.8"], per_image["features.8"])
    assert cam(images, targets=2).targets.tolist() == [2, 2, 2]
    for bad in (4, -1, [0, 1], [0.5, 1.0, 2.0], "biggest"):
        with pytest.raises(ConfigError):
            cam(images, targets=bad)


def test_channels_last_gives_same_maps(model, images):
    a = GradCAM(model, LAYERS, channels_last=True)(images)
    b = GradCAM(model, LAYERS, channels_last=False)(images)
    for layer in LAYERS:
        np.testing.assert_allclose(normalise_maps(a[layer]).numpy(), normalise_maps(b[layer]).numpy(), atol=1e-4)


def test_bf16_autocast_gives_float32_maps_close_to_fp32(model, images):
    """bf16 autocast (meant for CUDA; CPU autocast runs the same code path)."""
    fp32 = GradCAM(model, LAYERS)(images)
    bf16 = GradCAM(model, LAYERS, autocast="bf16")(images, targets=fp32.targets)
    assert bf16.logits.dtype == torch.float32
    for layer in LAYERS:
        assert bf16[layer].dtype == torch.float32
        r = np.corrcoef(fp32[layer].flatten().numpy(), bf16[layer].flatten().numpy())[0, 1]
        assert r > 0.95, (layer, r)
    with pytest.raises(ConfigError):
        GradCAM(model, autocast="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_maps_match_cpu(model, images):
    cpu = GradCAM(model, LAYERS)(images)
    gpu_model = copy.deepcopy(model).cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # TF32 convs would differ by ~1e-3
        gpu = GradCAM(gpu_model, LAYERS)(images, targets=cpu.targets)
    assert gpu["features.8"].is_cuda and gpu.logits.is_cuda
    for layer in LAYERS:
        np.testing.assert_allclose(normalise_maps(gpu[layer]).cpu().numpy(), normalise_maps(cpu[layer]).numpy(),
                                   atol=1e-3)
    bf16 = GradCAM(gpu_model, LAYERS, autocast="bf16")(images, targets=cpu.targets).cpu()
    for layer in LAYERS:
        assert np.corrcoef(cpu[layer].flatten().numpy(), bf16[layer].flatten().numpy())[0, 1] > 0.95
    assert all(p.grad is None for p in gpu_model.parameters())


# ---------------------------------------------------------------------------
# how it computes
# ---------------------------------------------------------------------------


def test_no_graph_below_shallowest_target_and_no_parameter_grads(model, images):
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (output.requires_grad, torch.is_grad_enabled())

        return hook

    probes = {n: model.get_submodule(n) for n in ("features.1", "features.3", "features.5", "features.7")}
    handles = [m.register_forward_hook(record(n)) for n, m in probes.items()]
    try:
        GradCAM(model, ["features.4", "features.8"])(images)
    finally:
        for h in handles:
            h.remove()
    # before the shallowest target: nothing recorded for autograd
    assert seen["features.1"] == (False, False)
    assert seen["features.3"] == (False, False)
    # after it: the graph runs from the target activation on
    assert seen["features.5"] == (True, True)
    assert seen["features.7"] == (True, True)
    assert all(p.grad is None for p in model.parameters())


def test_prefix_before_first_target_runs_in_inference_mode(model, images):
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (torch.is_inference_mode_enabled(), output.is_inference())

        return hook

    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in ("features.2", "features.6")]
    try:
        res = GradCAM(model, "features.4")(images)
    finally:
        for h in handles:
            h.remove()
    assert seen["features.2"] == (True, True)
    assert seen["features.6"] == (False, False)  # normal tensors from the target on
    assert not res["features.4"].is_inference() and not torch.is_inference_mode_enabled()


def test_target_whose_prefix_tensor_is_saved_later_falls_back_to_no_grad(model, images):
    # inside a squeeze-excitation block: ``scale * input`` saves ``input``, which was computed
    # before the target, so it cannot be an inference tensor
    layer = "features.7.0.block.2.fc1"
    cam = GradCAM(model, layer)
    first = cam(images)
    assert cam._inference_prefix is False
    again = cam(images)
    torch.testing.assert_close(first[layer], again[layer])
    assert first[layer].abs().sum() > 0
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert all(not x._forward_hooks for x in model.modules())


def test_autocast_state_survives_the_inference_prefix(model, images):
    cam = GradCAM(model, "features.4", autocast="bf16")
    dtypes = {}

    def record(module, inputs, output):
        dtypes["f6"] = output.dtype

    handle = model.features[6].register_forward_hook(record)
    try:
        cam(images)
    finally:
        handle.remove()
    assert dtypes["f6"] == torch.bfloat16  # still under autocast after the prefix ended in the hook
    assert not torch.is_autocast_enabled("cpu")


def test_eval_batch_norm_equivalent_matches_torch():
    from mammography.cam.base import _eval_batch_norm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 3)
    mean, var = torch.randn(5), torch.rand(5) + 0.5
    w, b = torch.randn(5), torch.randn(5)
    for weight, bias in [(w, b), (None, b), (w, None), (None, None)]:
        expected = F.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-3)
        torch.testing.assert_close(_eval_batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-3), expected)
    assert _eval_batch_norm(x, mean, var, w, b, True) is None  # training mode is left to torch


def test_lean_backward_mode_intercepts_batch_norm_conv_pooling_and_activations():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    bn.running_mean.normal_()
    conv = nn.Conv2d(5, 5, 3, padding=1, groups=5)
    x = torch.randn(2, 5, 4, 3, requires_grad=True)
    with _LeanBackward():
        y = bn(x)
        z = y.clone()
        out = F.silu(z, inplace=True)
        w = y.clone()
        positional = F.silu(w, True)  # inplace given positionally
        c = conv(out)
        pooled = F.adaptive_avg_pool2d(c, 1)
    assert type(y.grad_fn).__name__.startswith("Addcmul")  # not NativeBatchNormBackward
    torch.testing.assert_close(y, bn(x))
    assert out is not z and torch.equal(z, y)  # the in-place SiLU ran out of place
    torch.testing.assert_close(out, F.silu(y))
    assert torch.equal(w, y) and torch.equal(positional, out)
    assert type(c.grad_fn).__name__ == "_ConvInputGradientBackward"
    torch.testing.assert_close(c, conv(F.silu(y)))
    assert type(pooled.grad_fn).__name__ == "_SpatialMeanBackward"
    (g,) = torch.autograd.grad(pooled.sum(), c)
    assert g.stride()[-2:] == (0, 0)  # a broadcast view, not a full-size tensor
    torch.testing.assert_close(g, torch.full_like(c, 1 / 12))
    assert torch._C._len_torch_function_stack() == 0
    assert all(p.grad is None for p in conv.parameters())


def test_batch_norm_folded_into_its_convolution_only_where_nothing_else_sees_the_output(model64):
    """features.8 is Conv2d -> BatchNorm2d -> SiLU in a Sequential: recorded, the batch
    norm runs inside the convolution (one pass), with the same values and gradients.
    A conv that is a target layer, or whose output a hook sees, is left alone."""
    from mammography.cam.base import _foldable_batch_norms

    block = model64.features[8]
    conv = block[0]
    torch.manual_seed(0)
    x = torch.randn(2, 320, 4, 4, dtype=torch.float64)
    seed = torch.randn(2, 1280, 4, 4, dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    expected_out = block(a)
    expected_grad = torch.autograd.grad(expected_out, a, seed)[0]

    folds = _foldable_batch_norms(model64, targets=[])
    assert id(conv.weight) in folds
    assert id(model64.features[2][0].block[0][0].weight) in folds  # inside MBConv blocks too
    assert id(conv.weight) not in _foldable_batch_norms(model64, targets=[conv])

    def run(folds):
        b = x.clone().requires_grad_(True)
        with _LeanBackward(folds):
            out = block(b)
        return out, torch.autograd.grad(out, b, seed)[0]

    out, grad = run(folds)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "_ConvInputGradientBackward"  # SiLU <- conv
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)

    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        out, grad = run(folds)
    finally:
        handle.remove()
    assert type(out.grad_fn.next_functions[0][0]).__name__.startswith("Addcmul")  # not folded
    torch.testing.assert_close(seen[0], conv(x))  # the hook saw the convolution's own output
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_folded_weights_follow_changed_parameters(model, images):
    """The folded weights are kept between calls; changing the model (new batch-norm
    statistics, new weights loaded in place) must show in the next call."""
    m = copy.deepcopy(model)
    cam = GradCAM(m, "stages")
    cam(images, targets=[0, 1, 2])
    with torch.no_grad():
        m.features[3][0].block[0][1].running_var.mul_(4)
        m.features[5][1].block[3][0].weight.mul_(-1)
    again = cam(images, targets=[0, 1, 2])
    fresh = GradCAM(m, "stages")(images, targets=[0, 1, 2])
    unchanged = GradCAM(model, "stages")(images, targets=[0, 1, 2])
    for layer in again.layers:
        torch.testing.assert_close(again[layer], fresh[layer])
    assert not torch.allclose(again["features.2"], unchanged["features.2"])


class CountingLeanBackward(_LeanBackward):
    """_LeanBackward that also adds up the bytes its saved-tensor hook stores."""

    def __init__(self):
        self.kept_bytes = 0
        super().__init__()

    def _pack(self, tensor):
        packed = _LeanBackward._pack(tensor)
        if not isinstance(packed, _Recompute):
            self.kept_bytes += tensor.numel() * tensor.element_size()
        return packed


def test_lean_backward_keeps_activation_inputs_only_and_gives_autograds_gradients(model64):
    """Two MBConv blocks (features.2, with squeeze-excitation and a residual): the
    gradient for the input equals plain autograd's, and what is kept for the
    backward pass is what the SiLUs need, not the convolutions' inputs, the batch
    norms' inputs or copies of the squeeze-excitation input."""
    stage = model64.features[2]
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32, dtype=torch.float64)
    seed = torch.randn(2, 24, 16, 16, dtype=torch.float64)

    plain_bytes = [0]

    def count(t):
        plain_bytes[0] += t.numel() * t.element_size()
        return t

    a = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        expected = torch.autograd.grad(stage(a), a, seed)[0]

    lean = CountingLeanBackward()
    b = x.clone().requires_grad_(True)
    with lean:
        out = stage(b)
    got = torch.autograd.grad(out, b, seed)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    # block 0: SiLU inputs 96 x 32^2 (expand) + 96 x 16^2 (depthwise); block 1: 2 x 144 x 16^2;
    # plus per-image vectors of the squeeze-excitation and the weights (each a few KB)
    silu_inputs = 2 * 8 * (96 * 32 * 32 + 96 * 16 * 16 + 2 * 144 * 16 * 16)
    assert silu_inputs <= lean.kept_bytes < 1.1 * silu_inputs
    assert lean.kept_bytes < 0.4 * plain_bytes[0]
    assert all(p.grad is None for p in stage.parameters())


def test_recomputed_activation_output_refuses_an_input_changed_in_place():
    x = torch.randn(3, 4, requires_grad=True)
    with _LeanBackward():
        h = x * 2
        y = F.silu(h)
        s = torch.sigmoid(y.sum())
        out = s * y  # keeps y: stored as silu(h)
    with torch.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(out.sum(), x)


def test_grad_mode_hooks_and_train_flags_restored(model, images):
    m = copy.deepcopy(model)
    m.train()
    m.features[3].eval()  # a mixed state must come back exactly
    modes = [x.training for x in m.modules()]
    flags = [p.requires_grad for p in m.parameters()]
    with torch.no_grad():
        res = GradCAM(m, "stages")(images)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert len(res.layers) == 9
    assert [x.training for x in m.modules()] == modes
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(not x._forward_hooks for x in m.modules())
    assert all(p.grad is None for p in m.parameters())
    assert torch._C._len_torch_function_stack() == 0
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_hooks_removed_and_state_restored_when_forward_raises(model):
    m = copy.deepcopy(model)
    m.train()
    modes = [x.training for x in m.modules()]
    cam = GradCAM(m, ["features.2", "features.8"])
    with pytest.raises(RuntimeError):
        cam(torch.zeros(1, 1, SIZE, SIZE))  # 1 channel: features.0's conv raises

    def explode(module, inputs, output):
        raise RuntimeError("boom")

    # raises after features.2's hook fired and switched gradient recording on
    handle = m.features[5].register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cam(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        handle.remove()
    assert torch.is_grad_enabled()
    assert [x.training for x in m.modules()] == modes
    assert all(not x._forward_hooks for x in m.modules())
    assert torch._C._len_torch_function_stack() == 0  # the recording mode was popped
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None  # and its saved-tensor hooks


def test_frozen_parameters_work_and_stay_frozen(model, images):
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    m.classifier.requires_grad_(True)  # partly frozen: flags must come back as they were
    flags = [p.requires_grad for p in m.parameters()]
    frozen = GradCAM(m, LAYERS)(images, targets=[0, 1, 2])
    normal = GradCAM(model, LAYERS)(images, targets=[0, 1, 2])
    for layer in LAYERS:
        torch.testing.assert_close(frozen[layer], normal[layer])
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())


def test_works_inside_inference_mode_and_as_context_manager(model, images):
    with GradCAM(model) as cam, torch.inference_mode():
        res = cam(images)
        assert torch.is_inference_mode_enabled()
    expected = GradCAM(model)(images)
    torch.testing.assert_close(res["features.8"], expected["features.8"])
    assert repr(cam) == "GradCAM(layers=['features.8'])"


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------


def test_layer_specs_for_efficientnet(model):
    assert default_layer_name(model) == "features.8"
    assert [t.name for t in resolve_layers(model)] == ["features.8"]
    assert stage_names(model) == [f"features.{i}" for i in range(9)]
    names = [t.name for t in resolve_layers(model, ["features.6", model.features[8], "features.6"])]
    assert names == ["features.6", "features.8"]
    with pytest.raises(ConfigError, match="features.8"):
        resolve_layers(model, "featurs.8")  # the message suggests the right name
    with pytest.raises(ConfigError):
        resolve_layers(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(ConfigError):
        resolve_layers(model, [])


@pytest.mark.parametrize(
    "builder, expected",
    [("resnet50", "layer4"), ("densenet121", "features.norm5"), ("convnext_tiny", "features.7")],
)
def test_automatic_layer_for_other_cnns(builder, expected):
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, builder)(weights=None, num_classes=4).eval()
    assert default_layer_name(m) == expected
    x = structured_images(2, 64, seed=3)
    res = LayerCAM(m)(x)  # densenet applies an in-place ReLU to norm5's output
    assert res.layers == (expected,)
    assert res[expected].shape == (2, 2, 2)
    assert torch.isfinite(res[expected]).all()
    assert all(p.grad is None for p in m.parameters())


def test_automatic_layer_by_probing_a_plain_cnn():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    assert default_layer_name(m) == "3"
    res = HiResCAM(m)(structured_images(2, 32))
    assert res["3"].shape == (2, 16, 16)
    with pytest.raises(ConfigError):
        stage_names(m)


# ---------------------------------------------------------------------------
# result helpers
# ---------------------------------------------------------------------------


def test_result_helpers(model, images):
    res = GradCAM(model, LAYERS)(images)
    norm = res.normalise()
    for layer in LAYERS:
        flat = norm[layer].flatten(1)
        assert torch.allclose(flat.amin(1), torch.zeros(3)) and torch.allclose(flat.amax(1), torch.ones(3))
    assert normalise_maps(torch.full((1, 3, 3), 7.0)).abs().max() == 0  # constant map -> zeros

    up = res.upsample()
    assert up["features.4"].shape == (3, SIZE, SIZE)
    assert res.upsample(32)["features.8"].shape == (3, 32, 32)

    fused = res.fuse("mean")
    assert fused.layers == ("fused",) and fused["fused"].shape == (3, 8, 8)  # the largest map: features.4
    manual = torch.stack([
        torch.nn.functional.interpolate(normalise_maps(res[n])[:, None], size=(8, 8), mode="bilinear",
                                        align_corners=False)[:, 0]
        for n in LAYERS
    ]).mean(0)
    torch.testing.assert_close(fused["fused"], manual)
    lc = fuse_maps([res[n] for n in LAYERS], how="layercam", size=SIZE)
    assert lc.shape == (3, SIZE, SIZE)
    assert float(lc.max()) <= float(np.tanh(2.0)) + 1e-6
    with pytest.raises(ConfigError):
        res.fuse("median")

    geom = compute_geometry((300, 150), SIZE, flip=True)
    back = res.normalise().to_original(geom, layer="features.8")
    assert len(back) == 3 and back[0].shape == (300, 150) and back[0].dtype == np.float32
    expected = geom.to_original(norm["features.8"][0])
    np.testing.assert_allclose(back[0], expected)
    with pytest.raises(ConfigError):
        res.to_original([geom])  # one geometry for three images

    arrays = res.cpu().numpy()
    assert set(arrays) == {"logits", "probs", "targets", *(f"maps/{n}" for n in LAYERS)}
    assert arrays["maps/features.8"].dtype == np.float32
    assert isinstance(res, CAMResult) and len(res) == 3 and res.map() is res["features.8"]
    with pytest.raises(ConfigError):
        res.map("features.1")
