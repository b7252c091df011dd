"""Which layers a CAM is computed at: names, lists, ``"stages"`` and automatic choice.

A target layer is named by its dotted path in ``model.named_modules()``
(``"features.8"`` is the final conv block of torchvision's EfficientNet-B0,
16 x 16 at 512 px input). :func:`resolve_layers` turns what a user wrote into
``(name, module)`` pairs and explains a typo with the nearest names.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mammography.errors import ConfigError

__all__ = ["TargetLayer", "resolve_layers", "default_layer_name", "stage_names", "LayerSpec", "density_layer_names",
           "split_layer_args"]

#: what users may pass as ``layers``: None (automatic), a name, ``"stages"``,
#: a module of the model, or a sequence of names / modules
LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

#: side of the probe image used when a model's last conv block must be found
#: by running it (models without a torchvision-style ``features``/``layer4``)
_PROBE_SIZE = 224


@dataclass(frozen=True)
class TargetLayer:
    """One layer whose output activations a CAM is computed from.

    Attributes
    ----------
    name : dotted path of the module in ``model.named_modules()``.
    module : the module itself.
    """

    name: str
    module: nn.Module


def resolve_layers(model: nn.Module, layers: LayerSpec = None) -> list[TargetLayer]:
    """Turn a layer specification into the model's target layers.

    Parameters
    ----------
    model : the classifier.
    layers : ``None`` picks the last convolutional block (see
        :func:`default_layer_name`); a dotted module name (``"features.8"``);
        ``"stages"`` for every stage of the backbone (see :func:`stage_names`);
        a module of ``model``; or a sequence of names / modules. Duplicates are
        dropped, the order given is kept.

    Returns
    -------
    list of :class:`TargetLayer`, at least one.

    Raises
    ------
    ConfigError
        A name is not a module of the model, a module does not belong to it,
        or the list is empty.
    """
    if layers is None:
        names: list[str | nn.Module] = [default_layer_name(model)]
    elif isinstance(layers, str) and layers == "stages":
        names = list(stage_names(model))
    elif isinstance(layers, (str, nn.Module)):
        names = [layers]
    else:
        names = []
        for item in layers:
            names.extend(stage_names(model) if item == "stages" else [item])
    if not names:
        raise ConfigError("no target layers given; name at least one (e.g. 'features.8') or use 'stages'")

    by_name = dict(model.named_modules())
    by_module = {id(m): n for n, m in by_name.items()}
    out: list[TargetLayer] = []
    seen: set[str] = set()
    for item in names:
        if isinstance(item, nn.Module):
            name = by_module.get(id(item))
            if name is None:
                raise ConfigError(f"target layer {type(item).__name__} is not a module of this model")
        else:
            name = str(item)
            if name not in by_name or name == "":
                raise ConfigError(_unknown_layer_message(name, by_name))
        if name not in seen:
            seen.add(name)
            out.append(TargetLayer(name, by_name[name]))
    return out


def split_layer_args(values: Sequence[str] | str | None) -> list[str] | None:
    """Layer names as a command line gives them (``--layers a,b c``) -> ``["a", "b", "c"]``; None stays None."""
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    return [name.strip() for item in values for name in str(item).split(",") if name.strip()] or None


@functools.lru_cache(maxsize=1)
def _density_probe() -> nn.Module:
    from mammography.models import build_density_model

    return build_density_model()


def density_layer_names(layers: LayerSpec = None) -> list[str]:
    """The layer names ``layers`` stands for on the density model (EfficientNet-B0), in order.

    ``None`` is the final block (``features.8``), ``"stages"`` is
    ``features.0`` .. ``features.8``; comma-separated items are split. Typos
    are explained (see :func:`resolve_layers`). Every run's model has this
    architecture, so the names are known before any checkpoint is read: a
    stored record is matched by them.
    """
    if layers is not None and not isinstance(layers, nn.Module):
        layers = split_layer_args(layers)
        if layers is None:
            raise ConfigError("no target layers given; name at least one (e.g. 'features.8') or use 'stages'")
        layers = layers[0] if len(layers) == 1 else layers
    return [t.name for t in resolve_layers(_density_probe(), layers)]


def _unknown_layer_message(name: str, by_name: dict[str, nn.Module]) -> str:
    candidates = [n for n in by_name if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    top = ", ".join(n for n in candidates if "." not in n)
    return (
        f"layer {name!r} is not a module of the model{hint} "
        f"(top-level modules: {top}; use dotted paths like 'features.8' or 'stages')"
    )


def stage_names(model: nn.Module) -> list[str]:
    """Names of the backbone's stages, shallow to deep.

    * torchvision models with a ``features`` Sequential (EfficientNet,
      MobileNet, ConvNeXt, DenseNet, VGG): every child of ``features``
      (``features.0`` .. ``features.8`` for EfficientNet-B0);
    * ResNet-style models: ``layer1`` .. ``layer4``.

    Raises
    ------
    ConfigError
        The model has neither layout; list the layers by name instead.
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        prefix = _name_of(model, features)
        return [f"{prefix}.{child}" for child, _ in features.named_children()]
    resnet = [n for n in ("layer1", "layer2", "layer3", "layer4") if isinstance(getattr(model, n, None), nn.Module)]
    if len(resnet) == 4:
        return resnet
    raise ConfigError(
        f"'stages' is defined for models with a 'features' Sequential or ResNet layers; "
        f"{type(model).__name__} has neither: list the layer names instead"
    )


def default_layer_name(model: nn.Module) -> str:
    """The last convolutional block of a CNN, the usual Grad-CAM layer.

    * ``features`` Sequential: its last child (``features.8`` for
      EfficientNet-B0, ``features.norm5`` for DenseNet-121, ``features.7``
      for ConvNeXt-Tiny);
    * ResNet-style: ``layer4``;
    * otherwise the model is run once on a 224 x 224 probe image and the last
      module to produce a 4-D feature map larger than 1 x 1 is chosen (the
      innermost one when a container passes its child's output through).

    Raises
    ------
    ConfigError
        No module produces a spatial feature map.
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        last = list(features.named_children())[-1][0]
        return f"{_name_of(model, features)}.{last}"
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return "layer4"
    return _probe_last_spatial_layer(model)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ConfigError(f"{type(module).__name__} is not a module of the model")  # pragma: no cover


def _probe_last_spatial_layer(model: nn.Module) -> str:
    """Run the model once and return the last module whose output is a spatial map."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer; name the target layer explicitly")
    param = next(model.parameters())
    probe = torch.zeros(1, first_conv.in_channels, _PROBE_SIZE, _PROBE_SIZE, device=param.device, dtype=param.dtype)

    finished: list[tuple[str, torch.Tensor]] = []  # in completion order
    calls: dict[str, int] = {}

    def make_hook(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
                finished.append((name, output))

        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    best: tuple[str, torch.Tensor] | None = None
    for name, out in finished:
        if calls[name] != 1:
            continue  # a module reused within one pass (e.g. a shared ReLU) has no single output
        if best is not None and out is best[1]:
            continue  # a container passing its child's output through: keep the inner name
        best = (name, out)
    if best is None:
        raise ConfigError(f"no layer of {type(model).__name__} produces a spatial feature map; name one explicitly")
    return best[0]
