"""The shared CAM engine: hooks, one forward pass, gradients to the activations only.

How one call works (see DESIGN.md section 4):

1. The model runs in eval mode under ``torch.no_grad()``: no autograd graph
   is kept for the layers before the shallowest target layer.
2. A forward hook on each target layer keeps its output ``A``. At the first
   target reached, the hook switches gradient recording on and makes ``A`` a
   leaf that requires grad, so the graph starts there (for EfficientNet-B0's
   ``features.8`` only pool -> dropout -> linear are recorded). The hook hands
   the rest of the network a *copy* of ``A``: torchvision's MBConv adds its
   residual in place and some activations are in-place, which would otherwise
   change the tensor being differentiated.
3. ``torch.autograd.grad(logits, A, one_hot)`` gives dScore/dA. Only what is
   needed for ``A`` is computed: no parameter's ``.grad`` is filled and no
   backward pass runs below the shallowest target layer.
4. The method turns (A, dScore/dA) into maps, batched on the model's device.

The recorded part runs under :class:`_LeanBackward`, which keeps only what
gradients with respect to activations need (no convolution inputs, no batch
norm inputs, no copies for in-place activations, activation outputs
recomputed from their inputs) and folds batch norm into the convolution
before it. For all nine stages of EfficientNet-B0 at 512 px the call's
tensors peak at 2.6x those of a forward pass (autograd alone: 6.0x) and it
runs about 20 % faster than with autograd alone (CPU; ``bench/bench_cam.py
--mode stages-memory``).

Hooks are removed and every module's train/eval flag restored in ``finally``;
``requires_grad`` flags are never touched, so frozen models work too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from mammography.cam.layers import LayerSpec, TargetLayer, resolve_layers
from mammography.cam.result import CAMResult
from mammography.errors import ConfigError

__all__ = ["BaseCAM", "TargetSpec"]

#: what users may pass as ``targets``: ``None``/``"predicted"`` (the predicted
#: class), ``"all"`` (every class), one class index for all images, or one per image
TargetSpec = int | str | Sequence[int] | torch.Tensor | None

_AUTOCAST_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _batch_norm_affine(running_mean, running_var, weight, bias, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` (per channel), constants for autograd."""
    with torch.no_grad():
        scale = torch.rsqrt(running_var + eps)
        if weight is not None:
            scale = scale * weight
        shift = -running_mean * scale
        if bias is not None:
            shift = shift + bias
    return scale, shift


def _eval_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                     momentum=0.1, eps=1e-5):
    """Eval-mode batch norm as one per-channel affine, or None where that does not apply.

    Same arguments as :func:`torch.nn.functional.batch_norm`. The value is
    that of PyTorch's kernel (which computes the same scale and shift); its
    backward is one multiply, about half the cost of PyTorch's CPU
    batch-norm backward. Scale and shift are constants (CAMs never need
    parameter gradients), so autograd does not keep ``input`` for the backward.
    """
    if training or running_mean is None or running_var is None or input.ndim < 2:
        return None
    out_dtype = input.dtype
    if input.dtype != running_var.dtype:
        if not torch.is_autocast_enabled(input.device.type):
            return None
        input = input.to(running_var.dtype)  # as PyTorch's kernel: float32 maths, result in the input's dtype
    scale, shift = _batch_norm_affine(running_mean, running_var, weight, bias, eps)
    shape = (1, -1) + (1,) * (input.ndim - 2)
    return torch.addcmul(shift.view(shape), input, scale.view(shape)).to(out_dtype)


#: activations whose ``inplace=True`` makes autograd clone their input
_INPLACE_ACTIVATIONS = (F.silu, F.relu, F.relu6, F.hardswish, F.leaky_relu, F.elu)

#: activations whose backward keeps their input: when a later op keeps their output
#: too (a squeeze-excitation product), the output is recomputed from that input
_RECOMPUTABLE_ACTIVATIONS = (F.silu, F.gelu, F.hardswish, F.mish)


class _ConvInputGradient(torch.autograd.Function):
    """``conv2d`` whose backward pass gives the gradient for its input only.

    Autograd's convolution keeps its input for the weight gradient, which a CAM
    never needs; for EfficientNet-B0 those inputs (the expanded MBConv
    activations) are over a third of what a recorded forward pass keeps. This
    keeps the weight alone; the input gradient is the kernel call autograd
    makes (``convolution_backward`` with only the input requested), so the
    values are identical.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
        ctx.conv = (input.shape, input.dtype, channels_last, stride, padding, dilation, groups)
        return torch.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, channels_last, stride, padding, dilation, groups = ctx.conv
        # Only the input's shape and layout are read: an uninitialised tensor of that layout
        # (never written, so never paged in on CPU) keeps the kernels channels-last.
        layout = torch.channels_last if channels_last else torch.contiguous_format
        like = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        grad_input = torch.ops.aten.convolution_backward(
            grad, like, weight.to(grad.dtype), None, _pair(stride), _pair(padding), _pair(dilation),
            False, [0, 0], groups, [True, False, False],
        )[0]  # fmt: skip
        return grad_input.to(dtype), None, None, None, None, None, None


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _conv2d_arguments(args, kwargs) -> tuple:
    """(input, weight, bias, stride, padding, dilation, groups) of a ``torch.conv2d`` call."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    values = dict(zip(names, (None, None, None, 1, 0, 1, 1)))
    values.update(zip(names, args))
    values.update(kwargs)
    return tuple(values[n] for n in names)


class _SpatialMean(torch.autograd.Function):
    """Average pooling to 1 x 1 whose gradient stays a broadcast view.

    Autograd's mean backward divides an expanded gradient, which writes a
    full-size tensor; in a squeeze-excitation block that is an extra pass
    over the largest activation of every block.
    """

    @staticmethod
    def forward(ctx, input):
        ctx.shape = input.shape
        return F.adaptive_avg_pool2d(input, 1)  # the model's own kernel: the same values

    @staticmethod
    def backward(ctx, grad):
        # divided as PyTorch's CPU kernel divides (by height, then width): the same values
        return (grad / ctx.shape[-2] / ctx.shape[-1]).expand(ctx.shape)


class _FoldedBatchNorm:
    """A Conv2d -> BatchNorm2d pair of a plain ``nn.Sequential``, run as one convolution.

    In the recorded part, eval-mode batch norm after a convolution is folded
    into the convolution's weight and bias (w * s, (b - mean) * s + beta with
    s = gamma / sqrt(var + eps)): one pass over the output instead of two,
    forward and backward. It applies only where the convolution's output can
    reach nothing but the batch norm: consecutive children of a Sequential
    whose forward is ``nn.Sequential.forward``, neither a target layer, with
    no hook that could see the unnormalised output.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d):
        self.conv = conv
        self.norm = norm
        self._cached: tuple | None = None  # (state of the sources, weight, bias)

    def applies(self) -> bool:
        if self.norm.training or _global_module_hooks():
            return False
        return not (self.conv._forward_hooks or self.norm._forward_pre_hooks)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight and bias, computed again only when a source tensor changed
        (otherwise some 400 small kernel launches per call for EfficientNet-B0)."""
        norm, conv = self.norm, self.conv
        sources = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        state = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        state += (norm.eps,)
        if self._cached is None or self._cached[0] != state:
            scale, shift = _batch_norm_affine(norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.eps)
            with torch.no_grad():
                weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
                bias = shift if conv.bias is None else shift + conv.bias * scale
            self._cached = (state, weight, bias.to(conv.weight.dtype))
        return self._cached[1], self._cached[2]


def _global_module_hooks() -> bool:
    from torch.nn.modules import module as _module

    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _foldable_batch_norms(model: nn.Module, targets: Sequence[nn.Module]) -> dict[int, _FoldedBatchNorm]:
    """Conv2d -> BatchNorm2d pairs of ``model`` that can run as one convolution (see
    :class:`_FoldedBatchNorm`), keyed by ``id`` of the convolution's weight."""
    excluded = {id(m) for m in targets}
    pairs: dict[int, _FoldedBatchNorm] = {}
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        children = list(seq.children())
        for conv, norm in zip(children, children[1:]):
            if (
                type(conv) is nn.Conv2d
                and type(norm) is nn.BatchNorm2d
                and conv.padding_mode == "zeros"
                and norm.running_mean is not None
                and norm.num_features == conv.out_channels
                and id(conv) not in excluded
                and id(norm) not in excluded
            ):
                pairs[id(conv.weight)] = _FoldedBatchNorm(conv, norm)
    return pairs


class _Recompute:
    """What a kept activation output is stored as: its function and its input."""

    __slots__ = ("function", "source", "version")

    def __init__(self, function, source: torch.Tensor):
        self.function = function
        self.source = source
        self.version = source._version

    def __call__(self) -> torch.Tensor:
        if self.source._version != self.version:
            raise RuntimeError(
                "an activation's input was modified in place after the CAM recorded it; "
                "the model must not change tensors that later layers still use"
            )
        with torch.no_grad():
            return self.function(self.source)


class _LeanBackward(TorchFunctionMode):
    """The recorded part of the forward pass, keeping only what activation gradients need.

    From the first target layer on, the forward pass runs under this mode:

    * ``conv2d`` -> :class:`_ConvInputGradient` (keeps the weight, not the input);
      a convolution followed by eval-mode batch norm in a Sequential runs as one
      convolution with the batch norm folded in (:class:`_FoldedBatchNorm`);
    * other eval-mode ``batch_norm`` -> :func:`_eval_batch_norm` (a per-channel
      affine with constant scale: keeps nothing, backward one multiply);
    * ``adaptive_avg_pool2d`` to 1 x 1 -> :class:`_SpatialMean` (keeps the
      shape, not the input; its gradient stays a broadcast view);
    * in-place activations run out of place: for ``silu_`` autograd would
      first copy the input it needs for the backward pass;
    * the output of a SiLU-like activation, when a later op keeps it (the
      squeeze-excitation product ``scale * input``), is stored as a reference
      to the activation's input (kept anyway) and recomputed when the
      backward pass needs it.

    What is left is essentially each activation's input: for EfficientNet-B0
    at all nine stages 122 MB per 512 px image instead of 301. Entering the
    mode installs the saved-tensor hooks of the last point; leaving it
    removes them.
    """

    def __init__(self, folds: dict[int, _FoldedBatchNorm] | None = None):
        super().__init__()
        self._folds = folds or {}
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self):
        self._saved_hooks.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._saved_hooks.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            self._saved_hooks.__exit__(*exc)

    @staticmethod
    def _pack(tensor: torch.Tensor):
        recipe = getattr(tensor, "_cam_recompute", None)
        return tensor if recipe is None else recipe

    @staticmethod
    def _unpack(packed):
        return packed() if isinstance(packed, _Recompute) else packed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            input = args[0] if args else kwargs["input"]
            folded = getattr(input, "_cam_folded", None)
            if folded is not None and folded is (args[1] if len(args) > 1 else kwargs.get("running_mean")):
                return input  # normalised already, by the convolution it came from
            out = _eval_batch_norm(*args, **kwargs)
            if out is not None:
                return out
        elif func is torch.conv2d:
            input, weight, bias, stride, padding, dilation, groups = _conv2d_arguments(args, kwargs)
            if input.requires_grad and not isinstance(padding, str) and weight.ndim == 4:
                fold = self._folds.get(id(weight))
                if fold is not None and fold.conv.weight is weight and fold.applies():
                    weight, bias = fold.weight_and_bias()
                    out = _ConvInputGradient.apply(input, weight, bias, stride, padding, dilation, groups)
                    out._cam_folded = fold.norm.running_mean
                    return out
                bias = None if bias is None else bias.detach()
                return _ConvInputGradient.apply(input, weight.detach(), bias, stride, padding, dilation, groups)
        elif func is F.adaptive_avg_pool2d:
            input = args[0] if args else kwargs["input"]
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            if size in (1, (1, 1), [1, 1]) and input.ndim in (3, 4) and input.requires_grad:
                return _SpatialMean.apply(input)
        elif func in _RECOMPUTABLE_ACTIVATIONS:
            return self._recomputable(func, args, kwargs)
        if kwargs.get("inplace") and func in _INPLACE_ACTIVATIONS:
            kwargs = {**kwargs, "inplace": False}
        return func(*args, **kwargs)

    @staticmethod
    def _recomputable(func, args, kwargs):
        input = args[0] if args else kwargs["input"]
        # always out of place; a positional bool is ``inplace`` (silu, hardswish, mish)
        options = tuple(a for a in args[1:] if not isinstance(a, bool))
        extra = {k: v for k, v in kwargs.items() if k not in ("input", "inplace")}
        out = func(input, *options, **extra)
        if isinstance(input, torch.Tensor) and input.requires_grad:
            out._cam_recompute = _Recompute(lambda t: func(t, *options, **extra), input)
        return out


class _Capture:
    """Forward hooks that keep the target activations and start the graph at the first one.

    Parameters
    ----------
    layers : the target layers.
    inference_prefix : run the layers before the first target in inference mode.
    folds : batch norms folded into their convolution in the recorded part
        (see :func:`_foldable_batch_norms`).
    """

    def __init__(
        self,
        layers: Sequence[TargetLayer],
        inference_prefix: bool = False,
        folds: dict[int, _FoldedBatchNorm] | None = None,
    ):
        self.layers = list(layers)
        self.folds = folds
        self.activations: dict[str, torch.Tensor] = {}
        self.inference_prefix = inference_prefix
        self._handles: list = []
        self._mode: TorchFunctionMode | None = None
        self._prefix_guard: torch.inference_mode | None = None

    def __enter__(self) -> "_Capture":
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._make_hook(layer.name)))
        if self.inference_prefix:
            # Entered last (inside no_grad and autocast), so leaving it in the first hook
            # restores exactly their state; ops in inference mode skip autograd's bookkeeping.
            self._prefix_guard = torch.inference_mode()
            self._prefix_guard.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        self._leave_prefix()

    def _leave_prefix(self) -> None:
        if self._prefix_guard is not None:
            self._prefix_guard.__exit__(None, None, None)
            self._prefix_guard = None

    def _start_recording(self) -> None:
        self._leave_prefix()
        # The caller's no_grad() context restores the previous mode after the forward.
        torch.set_grad_enabled(True)
        self._mode = _LeanBackward(self.folds)
        self._mode.__enter__()

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; pick a layer with a tensor output"
                )
            if name in self.activations:
                raise ConfigError(
                    f"layer {name!r} runs more than once in one forward pass (a shared module); "
                    "pick a layer that runs once"
                )
            if not self.activations:  # the first target layer: record the graph from here on
                self._start_recording()
            if output.is_inference():  # computed in the inference-mode prefix
                kept = output.clone().requires_grad_(True)
            else:
                kept = output if output.requires_grad else output.detach().requires_grad_(True)
            self.activations[name] = kept
            # Downstream in-place ops (residual `+=`, inplace SiLU/ReLU) must
            # not alter what we differentiate: give them a copy.
            return kept.clone()

        return hook


@contextlib.contextmanager
def _eval_mode(modules: Sequence[nn.Module]):
    """Put every module in eval mode; restore each one's own flag afterwards.

    Only modules in training mode are touched: ``model.eval()`` walks the
    whole tree through ``Module.__setattr__``, milliseconds of Python per call
    that leave a GPU idle.
    """
    training = [m for m in modules if m.training]
    try:
        for m in training:
            m.training = False
        yield
    finally:
        for m in training:
            m.training = True


class BaseCAM:
    """Gradient-based class activation maps at one or more layers of a classifier.

    Subclasses define :meth:`compute_maps`, i.e. how activations are weighted.
    Create one per model and call it on batches; it holds no hooks between
    calls. Usable as a context manager (``with GradCAM(model) as cam: ...``).

    Parameters
    ----------
    model : a classifier returning logits (B, K) for images (B, C, H, W).
    layers : target layers: ``None`` (the last conv block: ``"features.8"``
        for EfficientNet-B0), a dotted name, a list of names, or ``"stages"``
        (``features.0`` .. ``features.8``); see
        :func:`mammography.cam.layers.resolve_layers`.
    channels_last : feed the input in channels-last memory format (faster
        convolutions on CPU and GPU; convert the model too with
        ``model.to(memory_format=torch.channels_last)`` for the full gain).
    autocast : ``None`` (model dtype), ``"bf16"`` or ``"fp16"``: run the forward
        pass under ``torch.autocast`` on the model's device (meant for CUDA).
        CAM maths is always float32.

    Examples
    --------
    >>> cam = GradCAM(model, layers=["features.6", "features.8"])
    >>> res = cam(images)                      # predicted class
    >>> res["features.8"].shape                # (B, 16, 16) at 512 px
    >>> heat = res.normalise().upsample()      # (B, 512, 512) in [0, 1]
    """

    #: short name used in results, files and the CLI
    name: ClassVar[str] = "base"

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        channels_last: bool = True,
        autocast: str | torch.dtype | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.channels_last = bool(channels_last)
        self.autocast_dtype = _parse_autocast(autocast)
        self._modules = tuple(model.modules())
        self._folds = _foldable_batch_norms(model, [layer.module for layer in self.layers])
        # Layers before the first target run in inference mode (no autograd dispatch: ~10 % less
        # per-op overhead, which is what bounds a GPU at small maps). A model that reuses one of
        # those tensors after a target in an op autograd must save (e.g. a target inside a
        # squeeze-excitation block) cannot; the first such call switches back to no_grad for good.
        self._inference_prefix = True

    # -- the method -------------------------------------------------------
    def compute_maps(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Raw CAM (before the final ReLU) from activations and gradients.

        Parameters
        ----------
        activations, gradients : (N, C, h, w) float32, dScore/dA for each image.

        Returns
        -------
        (N, h, w) tensor.
        """
        raise NotImplementedError

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is hooked between calls; kept so ``with`` blocks read naturally."""

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={list(self.layer_names)})"

    # -- the engine ----------------------------------------------------------
    def __call__(self, images: torch.Tensor, targets: TargetSpec = None) -> CAMResult:
        """Compute CAMs for a batch.

        Parameters
        ----------
        images : (B, C, H, W) tensor, normalised as the model expects; moved to
            the model's device.
        targets : which class each map explains: ``None`` or ``"predicted"``
            (the predicted class), an ``int`` (that class for every image), a
            sequence / tensor of B class indices (e.g. the true classes), or
            ``"all"`` (every class, from one forward pass). 0-based indices.

        Returns
        -------
        CAMResult
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"images must be a (B, C, H, W) tensor, got {shape}")
        # a caller's inference_mode would forbid the small graph we record
        with torch.inference_mode(False):
            x = self._prepare_input(images)
            try:
                capture, logits = self._forward(x)
            except RuntimeError as exc:
                if not (self._inference_prefix and "nference tensor" in str(exc)):
                    raise
                self._inference_prefix = False
                capture, logits = self._forward(x)
            return self._explain(capture.activations, logits, targets, tuple(x.shape[-2:]))

    def _forward(self, x: torch.Tensor) -> tuple[_Capture, torch.Tensor]:
        """The model's forward pass; hooks off and train/eval flags restored on the way out."""
        capture = _Capture(self.layers, inference_prefix=self._inference_prefix, folds=self._folds)
        # capture last: its inference-mode prefix must sit inside no_grad and autocast
        with _eval_mode(self._modules), torch.no_grad(), self._autocast(x.device), capture:
            return capture, self.model(x)

    def _prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else images.device
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = images.to(device=device, dtype=dtype)
        if x.is_inference():
            x = x.clone()  # a normal tensor (we run under inference_mode(False))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _explain(
        self,
        activations: dict[str, torch.Tensor],
        logits: torch.Tensor,
        targets: TargetSpec,
        input_size: tuple[int, int],
    ) -> CAMResult:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ConfigError("the model must return a (B, K) tensor of logits for CAMs")
        missing = [n for n in self.layer_names if n not in activations]
        if missing:
            raise ConfigError(f"target layer(s) {', '.join(missing)} did not run in the forward pass")
        acts = [activations[n] for n in self.layer_names]
        if not logits.requires_grad:
            raise ConfigError(f"the logits do not depend on layer(s) {', '.join(self.layer_names)}")

        batch, num_classes = logits.shape
        all_classes = isinstance(targets, str) and targets == "all"
        classes = (
            torch.arange(num_classes, device=logits.device)
            if all_classes
            else _resolve_targets(targets, logits.detach(), batch, num_classes)
        )
        per_class: list[list[torch.Tensor]] = []  # [class pass][layer] -> (B, h, w)
        columns = classes.tolist() if all_classes else [classes]
        for i, cls in enumerate(columns):
            one_hot = torch.zeros_like(logits)
            if all_classes:
                one_hot[:, cls] = 1
            else:
                one_hot.scatter_(1, cls[:, None], 1)
            # Images are independent in eval mode, so the gradient of the
            # summed per-image scores is each image's own gradient.
            grads = torch.autograd.grad(
                logits, acts, grad_outputs=one_hot, retain_graph=i < len(columns) - 1, allow_unused=True
            )
            per_class.append([self._maps_for(name, a, g) for name, a, g in zip(self.layer_names, acts, grads)])

        logits = logits.detach().float()
        if all_classes:
            maps = {n: torch.stack([pc[j] for pc in per_class], dim=1) for j, n in enumerate(self.layer_names)}
            target_t = classes.expand(batch, num_classes).clone()
        else:
            maps = dict(zip(self.layer_names, per_class[0]))
            target_t = classes
        return CAMResult(
            maps=maps,
            logits=logits,
            probs=torch.softmax(logits, dim=1),
            targets=target_t,
            method=self.name,
            input_size=input_size,
        )

    def _maps_for(self, name: str, act: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        if grad is None:
            raise ConfigError(f"the logits do not depend on layer {name!r}")
        if act.ndim != 4:
            raise ConfigError(f"layer {name!r} gives a {act.ndim}-D output; CAMs need (B, C, h, w) feature maps")
        work = torch.promote_types(act.dtype, torch.float32)
        with torch.no_grad():
            if 0 in grad.stride():  # a broadcast view (the gradient of a global pooling): written out
                grad = grad.contiguous()  # as autograd's pooling backward writes it, same reduction order
            raw = self.compute_maps(act.detach().to(work), grad.to(work))
            return torch.relu(raw).float().contiguous()


def _resolve_targets(targets: TargetSpec, logits: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """(B,) int64 class indices on the logits' device."""
    if targets is None or (isinstance(targets, str) and targets == "predicted"):
        return logits.argmax(1)
    if isinstance(targets, str):
        raise ConfigError(f"unknown targets {targets!r}; use 'predicted', 'all', a class index or one per image")
    t = torch.as_tensor(targets, device=logits.device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ConfigError("target classes must be integers (0-based class indices)")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(batch).clone()
    if t.shape != (batch,):
        raise ConfigError(f"got {t.numel()} target classes for {batch} images")
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise ConfigError(f"target classes must be in 0..{num_classes - 1}, got {t.tolist()}")
    return t


def _parse_autocast(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or value in ("none", "fp32", "float32"):
        return None
    if isinstance(value, torch.dtype):
        if value in (torch.bfloat16, torch.float16):
            return value
        if value == torch.float32:
            return None
    elif str(value).lower() in _AUTOCAST_DTYPES:
        return _AUTOCAST_DTYPES[str(value).lower()]
    raise ConfigError(f"autocast must be None, 'bf16' or 'fp16', got {value!r}")
