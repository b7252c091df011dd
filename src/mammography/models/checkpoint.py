"""Load density-model checkpoints safely, whatever form they were saved in.

Checkpoints come from this tool (``best_model.pth``, a plain ``state_dict``)
and from the earlier ``mammography-pipelines`` project, whose files may

* wrap the ``state_dict`` under ``model_state``, ``model_state_dict`` or
  ``state_dict`` (next to ``epoch``, ``optimizer`` ... entries), possibly
  nested;
* carry DataParallel's ``module.`` (or ``torch.compile``'s ``_orig_mod.``)
  key prefixes;
* hold the backbone twice, as ``features.*`` and as ``backbone.features.*``
  (its model kept torchvision's EfficientNet-B0 under ``self.backbone`` and
  aliased its layers), or only as ``backbone.*``;
* have a wider head than 1280 inputs when the model fused extra embedding
  features, which this tool cannot reproduce.

Every file is read with ``torch.load(..., weights_only=True)``: tensors, plain
containers, numeric numpy scalars/arrays and ``pathlib`` paths (the earlier
project's cross-validation checkpoints pickle one in ``config``) only.
Before torch sees it, the file is scanned without running anything
(:mod:`mammography.models.safe_pickle`): a file that references other
classes or functions (a pickled ``nn.Module``, ``os.system``, a crafted
``__reduce__``) is refused, naming what it references; so is one whose
tensors would unpack to more than :data:`MAX_TENSOR_BYTES`, before any of it
is allocated. Pickle protocols 1 to 5 (all that ``torch.load`` reads) are
accepted. Loaded weights that are not
finite, sparse, quantized or on the ``meta`` device are refused as well.
Every refusal is one line; none suggests loading with ``weights_only=False``.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mammography.atomic import sha256_file
from mammography.errors import CheckpointError, printable
from mammography.io.files import require_regular_file
from mammography.models.density import FEATURE_DIM, NUM_CLASSES, build_density_model
from mammography.models.safe_pickle import (
    REWRITTEN_OPCODES,
    TORCH_OPCODES,
    ScanError,
    rebuild_with_protocol_2,
    scan_checkpoint,
)

__all__ = [
    "MAX_TENSOR_BYTES",
    "checkpoint_sha256",
    "load_backbone_weights",
    "load_checkpoint_state",
    "load_density_checkpoint",
    "load_state_into",
    "normalise_state_dict",
]

#: keys under which training scripts commonly wrap the state_dict, in the
#: order they are tried
WRAPPER_KEYS = ("model_state", "model_state_dict", "state_dict")
#: key prefixes added by nn.DataParallel / DistributedDataParallel and by
#: torch.compile; they say nothing about the architecture
WRAPPING_PREFIXES = ("module.", "_orig_mod.")
#: the earlier project's model kept torchvision's network under this attribute
BACKBONE_PREFIX = "backbone."
HEAD_WEIGHT = "classifier.1.weight"
#: what writes a checkpoint this tool can load; quoted in error messages
WRITER_HINT = "mammography train-density --save-best"
#: how many key names an error message lists
_LIST_LIMIT = 5
#: bytes of the density model's float32 state_dict (EfficientNet-B0, 4 classes; checked by a test)
MODEL_STATE_BYTES = 16_219_144
#: most tensor bytes a checkpoint may unpack to: the model 16 times over (a training checkpoint holds
#: the weights, optimizer moments and perhaps an EMA copy, possibly in float64); checked before allocation
MAX_TENSOR_BYTES = 16 * MODEL_STATE_BYTES
#: most bytes of object structure (the pickle without tensor data) a checkpoint may hold
MAX_PICKLE_BYTES = 32 << 20
#: the only non-tensor classes a checkpoint may name besides torch's own weights-only set
_PATH_CLASSES = (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath)


def _numpy_safe_globals() -> list:
    """Numpy callables/classes that only rebuild numeric scalars and arrays.

    Checkpoints written with ``sklearn`` metrics next to the weights (an
    ``np.float64`` kappa, an ``int64`` confusion matrix) reference these.
    Allowing them cannot run code: they rebuild a value of a numeric dtype
    from bytes. Object dtypes are deliberately not allowed. Each function is
    also allowed under its numpy 1.x name (``numpy.core``), which pickles
    written with numpy < 2 use. ``_frombuffer`` (protocol 5 arrays) fails on
    an object dtype, so it too rebuilds numbers only.
    """
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed core to _core
    multiarray = core.multiarray
    functions = [multiarray.scalar, multiarray._reconstruct]
    dtype_classes = sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=str)
    allowed: list = [np.ndarray, np.dtype, *dtype_classes, *functions]
    allowed += [(f, f"numpy.core.multiarray.{f.__name__}") for f in functions]
    # protocol 5 pickles arrays as frombuffer(bytes, dtype).reshape(shape): numeric dtypes only
    allowed += [core.numeric._frombuffer, (core.numeric._frombuffer, "numpy.core.numeric._frombuffer")]
    return allowed


def _path_safe_globals() -> list:
    """``pathlib`` path classes under every name a pickle may give them.

    A path of the other operating system's flavour (``WindowsPath`` on Linux)
    cannot be instantiated, so it is read as its pure counterpart; Python
    3.13 pickles name the classes in ``pathlib._local``.
    """
    pure = {"PosixPath": pathlib.PurePosixPath, "WindowsPath": pathlib.PureWindowsPath}
    allowed: list = []
    for cls in _PATH_CLASSES:
        try:
            cls()  # the concrete class of the other flavour raises here
            target = cls
        except (NotImplementedError, TypeError):
            target = pure[cls.__name__]
        allowed += [(target, f"pathlib.{cls.__name__}"), (target, f"pathlib._local.{cls.__name__}")]
    return allowed


def _safe_globals() -> list:
    return _numpy_safe_globals() + _path_safe_globals()


def _allowed_names() -> set[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    names = set(_get_allowed_globals())
    for entry in _safe_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _require_file(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an existing regular file (before any read)."""
    if path.is_dir():
        raise CheckpointError(
            f"{printable(path)} is a directory, not a checkpoint file: pass its best_model.pth "
            "(or load the run with mammography.runs.load_run)"
        )
    require_regular_file(path, "checkpoint", CheckpointError,
                         f"a density checkpoint (best_model.pth) is written by `{WRITER_HINT}`")


def _unsafe(names: set[str]) -> list[str]:
    """Referenced globals beyond weights; the model's own classes first, torch's building blocks last."""
    return sorted(names - _allowed_names(), key=lambda n: (n.startswith("torch."), n))


def _refuse_code(path: Path, names: list[str]) -> CheckpointError:
    shown = ", ".join(printable(n) for n in names[:_LIST_LIMIT])
    more = f" and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
    return CheckpointError(
        f"{printable(path)} asks to run code when loaded: it references {shown}{more} (Python code, not "
        f"weights); refusing to load it. Only plain weights are read: use a state_dict saved with "
        f"torch.save(model.state_dict(), 'best_model.pth') (as `{WRITER_HINT}` writes)"
    )


def _torch_reason(exc: Exception) -> str:
    """torch's error text without its advice lines, on one line."""
    drop = ("weights_only", "re-running", "documentation", "file an issue", "https://", "in pytorch 2.6")
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not any(word in line.lower() for word in drop)]
    text = printable(" ".join(kept)) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _torch_load_weights_only(path: Path) -> object:
    """Scan, then ``torch.load`` restricted to weights; unsafe or unreadable files raise CheckpointError."""
    size = path.stat().st_size
    if size > MAX_TENSOR_BYTES + MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{printable(path)} is {size / 1e6:.0f} MB, far more than an EfficientNet-B0 checkpoint "
            f"(about {MODEL_STATE_BYTES / 1e6:.0f} MB of weights); refusing to read it"
        )
    try:
        scan = scan_checkpoint(path, max_pickle_bytes=MAX_PICKLE_BYTES, max_tensor_bytes=MAX_TENSOR_BYTES)
    except ScanError as exc:
        unsafe = _unsafe(exc.scan.globals) if exc.scan is not None else []
        if unsafe:  # what it references matters more than where its structure broke
            raise _refuse_code(path, unsafe) from None
        raise CheckpointError(
            f"{printable(path)} is not a readable PyTorch checkpoint ({printable(exc)}); "
            f"it should be a state_dict saved with torch.save, as `{WRITER_HINT}` writes"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{printable(path)} cannot be read ({exc.strerror or exc})") from None
    unsafe = _unsafe(scan.globals)
    if unsafe:
        raise _refuse_code(path, unsafe)
    # instructions torch's weights-only reader lacks (protocols 1, 3-5) are rewritten first
    source = rebuild_with_protocol_2(path, scan) if scan.opcodes - TORCH_OPCODES else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about protocols and storages; we report ourselves
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle can fail in any way; nothing ran
        unknown = sorted(scan.opcodes - TORCH_OPCODES - REWRITTEN_OPCODES)
        reason = f"it uses pickle instructions {', '.join(unknown)}" if unknown else _torch_reason(exc)
        raise CheckpointError(
            f"{printable(path)} is not a readable PyTorch checkpoint ({reason}); "
            f"it should be a state_dict saved with torch.save, as `{WRITER_HINT}` writes"
        ) from None


def _is_state_dict(obj: object) -> bool:
    """True for a non-empty mapping of names to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict inside ``obj``, descending through wrapper keys."""
    seen = 0
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping) or seen > 4:
            raise CheckpointError(
                f"{printable(path)} holds a {type(obj).__name__}, not a state_dict of tensors; "
                f"save model.state_dict() with torch.save (as `{WRITER_HINT}` does)"
            )
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(printable(k) for k in list(obj)[:8])
            raise CheckpointError(
                f"{printable(path)} has no state_dict: expected tensors or one of the keys "
                f"{', '.join(WRAPPER_KEYS)}, found keys: {keys}"
            )
        obj = inner
        seen += 1
    return dict(obj)


def _strip_wrapping_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel/compile prefixes, however deeply they are stacked."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPING_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    return out


def _merge_backbone(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Fold ``backbone.*`` keys onto the top-level names they duplicate.

    A ``backbone.X`` whose ``X`` also exists must hold the same tensor (the
    earlier project aliased the layers, so both copies are equal); a
    ``backbone.X`` alone is renamed to ``X``.
    """
    out = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)}
    differing = []
    for key, value in state.items():
        if not key.startswith(BACKBONE_PREFIX):
            continue
        name = key[len(BACKBONE_PREFIX) :]
        if name not in out:
            out[name] = value
        elif out[name].shape != value.shape or not torch.equal(out[name], value):
            differing.append(name)
    if differing:
        raise CheckpointError(
            f"{printable(path)} holds two different copies of {len(differing)} weights (e.g. "
            f"{', '.join(printable(k) for k in differing[:_LIST_LIMIT])} vs backbone.*); it is not a model this tool "
            "can load unambiguously"
        )
    return out


def normalise_state_dict(obj: object, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Turn any supported checkpoint object into a plain torchvision-named state_dict.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned: a state_dict, or a dict wrapping one
        under ``model_state`` / ``model_state_dict`` / ``state_dict``.
    path : str or Path
        File it came from; used in error messages only.

    Returns
    -------
    dict[str, Tensor]
        Keys as in torchvision's ``efficientnet_b0`` (``features.*``,
        ``classifier.1.*``): wrappers unwrapped, ``module.`` / ``_orig_mod.``
        prefixes stripped, ``backbone.*`` duplicates checked and folded.

    Raises
    ------
    CheckpointError
        When no state_dict is found or duplicated weights disagree.
    """
    path = Path(path)
    state = _unwrap(obj, path)
    state = _strip_wrapping_prefixes(state)
    return _merge_backbone(state, path)


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return its normalised state_dict.

    Parameters
    ----------
    path : str or Path
        A ``.pth`` or ``.pt`` file written by ``torch.save``.

    Returns
    -------
    dict[str, Tensor]
        CPU tensors keyed by torchvision names (see :func:`normalise_state_dict`).

    Raises
    ------
    CheckpointError
        Missing or non-regular file; a file that references classes or
        functions beyond weights (refused before loading: nothing in it
        runs); one that claims more tensor bytes than
        :data:`MAX_TENSOR_BYTES`; an unreadable file; no state_dict inside;
        weights that are not finite, dense, unquantized CPU-loadable tensors.
    """
    path = Path(path)
    _require_file(path)
    state = normalise_state_dict(_torch_load_weights_only(path), path)
    _check_tensors(state, path)
    return state


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    if tensor.layout != torch.strided:
        return f"is a sparse tensor ({str(tensor.layout).replace('torch.', '')})"
    if tensor.is_meta:
        return "has no data (a meta tensor)"
    if tensor.is_quantized:
        return f"is quantized ({str(tensor.dtype).replace('torch.', '')})"
    if tensor.is_complex():
        return "is complex-valued"
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return "holds NaN or infinite values"
    return None


def _check_tensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights no trained model has: sparse, meta, quantized, complex or non-finite tensors."""
    for key, tensor in state.items():
        problem = _tensor_problem(tensor)
        if problem is not None:
            raise CheckpointError(
                f"{printable(path)}: weight {printable(key)} {problem}; a trained density model has dense, finite "
                f"float weights (the file is damaged, or not what `{WRITER_HINT}` writes)"
            )


def _head_problem(state: Mapping[str, torch.Tensor], num_classes: int, path: Path) -> str | None:
    """Describe why the classifier head cannot be loaded, or None when it fits."""
    weight = state.get(HEAD_WEIGHT)
    if weight is None or weight.ndim != 2:
        return None  # reported with the other missing keys
    out_features, in_features = weight.shape
    if in_features > FEATURE_DIM:
        extra = in_features - FEATURE_DIM
        return (
            f"{printable(path)} is a fused model: its head {HEAD_WEIGHT} takes {in_features} inputs, "
            f"i.e. the {FEATURE_DIM} image features plus {extra} extra embedding dims; this tool "
            f"builds the image-only EfficientNet-B0 and cannot load it. Use an image-only run "
            f"(trained with `{WRITER_HINT}`)"
        )
    if in_features != FEATURE_DIM:
        return f"{printable(path)}: head {HEAD_WEIGHT} takes {in_features} inputs, expected {FEATURE_DIM} (EfficientNet-B0)"
    if out_features != num_classes:
        return f"{printable(path)}: head {HEAD_WEIGHT} predicts {out_features} classes, expected {num_classes}"
    return None


def _key_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Missing, unexpected and wrongly shaped keys, as message fragments."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k.startswith(prefix)}
    given = {k: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k} {tuple(given[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in given and given[k].shape != expected[k]
    ]
    problems = []
    for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if names:
            more = f" (+{len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
            problems.append(f"{len(names)} {label}: {', '.join(printable(n) for n in names[:_LIST_LIMIT])}{more}")
    return problems


def load_state_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path = "<checkpoint>"
) -> nn.Module:
    """Load a normalised state_dict into ``model`` strictly, or change nothing.

    Parameters
    ----------
    model : nn.Module
        A model from :func:`~mammography.models.build_density_model`.
    state : Mapping[str, Tensor]
        Output of :func:`load_checkpoint_state` / :func:`normalise_state_dict`.
    path : str or Path
        Where ``state`` came from; used in messages.

    Returns
    -------
    nn.Module
        ``model``, with every parameter and buffer replaced.

    Raises
    ------
    CheckpointError
        A fused head (more than 1280 inputs), or any missing, unexpected or
        wrongly shaped key. All checks run before loading, so a refused
        checkpoint leaves ``model`` untouched.
    """
    path = Path(path)
    num_classes = model.state_dict()[HEAD_WEIGHT].shape[0]
    head = _head_problem(state, num_classes, path)
    if head is not None:
        raise CheckpointError(head)
    problems = _key_mismatches(model, state)
    if problems:
        raise CheckpointError(
            f"{printable(path)} does not fit the EfficientNet-B0 density model: {'; '.join(problems)}"
        )
    model.load_state_dict(dict(state), strict=True)
    return model


def load_density_checkpoint(
    path: str | Path, num_classes: int = NUM_CLASSES, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the density model and load a checkpoint into it.

    Parameters
    ----------
    path : str or Path
        ``best_model.pth`` / ``best_model.pt`` in any supported form.
    num_classes : int
        Classes the head must predict (4 for BI-RADS A-D).
    device : str or torch.device
        Where the returned model lives.

    Returns
    -------
    nn.Module
        The model in eval mode on ``device``.

    Raises
    ------
    CheckpointError
        See :func:`load_checkpoint_state` and :func:`load_state_into`.
    """
    state = load_checkpoint_state(path)
    model = build_density_model(num_classes=num_classes)
    load_state_into(model, state, path)
    return model.to(device).eval()


def load_backbone_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load only the ``features.*`` weights of a local EfficientNet-B0 file.

    Used for ``--pretrained-weights``: e.g. torchvision's ImageNet weights
    saved with ``torch.save(efficientnet_b0(weights=...).state_dict(), path)``.
    The file's classifier (1000 ImageNet classes) is ignored.

    Parameters
    ----------
    model : nn.Module
        torchvision ``efficientnet_b0``.
    path : str or Path
        The weights file; read with ``weights_only=True``.

    Returns
    -------
    nn.Module
        ``model`` with its ``features`` replaced.

    Raises
    ------
    CheckpointError
        Unsafe/missing file, or its ``features.*`` weights do not match
        EfficientNet-B0 exactly (nothing is loaded then).
    """
    path = Path(path)
    state = load_checkpoint_state(path)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise CheckpointError(
            f"{printable(path)} has no features.* weights; --pretrained-weights expects an EfficientNet-B0 "
            "state_dict (e.g. torchvision's ImageNet weights saved with torch.save(model.state_dict()))"
        )
    problems = _key_mismatches(model, features, prefix="features.")
    if problems:
        raise CheckpointError(f"{printable(path)} does not fit EfficientNet-B0's features: {'; '.join(problems)}")
    model.features.load_state_dict({k[len("features.") :]: v for k, v in features.items()}, strict=True)
    return model


def checkpoint_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a checkpoint file's bytes (to tie figures to weights).

    Raises
    ------
    CheckpointError
        When the file does not exist.
    """
    path = Path(path)
    _require_file(path)
    return sha256_file(path)
