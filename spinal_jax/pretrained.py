"""torchvision / timm ImageNet weights -> the Flax ResNet and VGG-BN backbones, and back into a model
built for another head.

Workflow::

    state = load_state_dict("wide_resnet101_2-32ee1156.pth")          # {torch key: np.ndarray}
    converted = convert_state_dict(state, "wide_resnet101_2")         # {'params', 'batch_stats'}
    save_converted("/ckpt/wrn101", converted, arch="wide_resnet101_2")  # Orbax (python -m spinal_jax.convert)
    variables = init_from_pretrained(model, model.init(key, x), "/ckpt/wrn101")

Conversion is exact: conv ``weight (O, I/g, kh, kw)`` -> ``kernel (kh, kw, I/g, O)``, Linear
``weight (out, in)`` -> ``kernel (in, out)``, BatchNorm ``weight / bias / running_mean / running_var`` ->
``params scale / bias`` and ``batch_stats mean / var``; ``num_batches_tracked`` is ignored. Torch
module paths map to Flax module names as ``layer1.0`` -> ``layer1_0``, ``downsample.0/1`` ->
``downsample_conv/_bn``, ``features.3`` -> ``features_3``, ``classifier.6`` -> ``classifier/fc_6``.
timm's ResNets use torchvision's names; timm's VGG ``pre_logits.fc1/fc2`` (7x7 and 1x1 convs) and
``head.fc`` are read as ``classifier.0/3/6``.

``.pth`` files are read with ``torch.load(weights_only=True)`` (torch is imported only there), which
refuses arbitrary pickled objects; ``.safetensors`` files need only the ``safetensors`` package. A file
that cannot be used (missing, empty, damaged, not weights, not of the arch) raises a
:class:`~spinal_jax.errors.UserError` whose message names the file, the problem and the fix.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spinal_jax.errors import UserError
from spinal_jax.models import create_model, get_spec
from spinal_jax.models.resnet import RESNET_CONFIGS
from spinal_jax.models.vgg import VGG_CONFIGS

SUPPORTED_ARCHS: tuple[str, ...] = (*RESNET_CONFIGS, *VGG_CONFIGS)
MAX_LISTED = 5  # mismatches listed per kind in an error message
_RESAVE = "download it again, or re-save the weights with torch.save(model.state_dict(), path)"

Variables = dict[str, Any]
FlatKey = tuple[str, ...]  # (collection, module, ..., leaf)


class StateDictMismatchError(UserError, ValueError):
    """A state dict or variable tree does not fit the architecture it is loaded into."""


class WeightsFileError(UserError, ValueError):
    """A weights file that cannot be read: empty, damaged or truncated, not weights, or unsafe."""


class WeightsFileNotFoundError(UserError, FileNotFoundError):
    """No weights file (or converted checkpoint) at the given path."""


class OutputExistsError(UserError, FileExistsError):
    """The output directory of a conversion exists already."""


def head_name(arch: str) -> str:
    """The head subtree of a supported arch, its registry entry's ``head_path``: ``'fc'`` (ResNets)
    or ``'classifier'`` (VGG)."""
    _check_arch(arch)
    return get_spec(arch).head_path


def _check_arch(arch: str) -> None:
    if arch not in SUPPORTED_ARCHS:
        raise UserError(f"Unsupported arch {arch!r}: use one of {', '.join(SUPPORTED_ARCHS)}.")


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a torchvision/timm state dict from ``.pth``/``.pt``/``.bin`` or ``.safetensors``.

    Accepts a plain state dict or a training checkpoint holding one under ``'state_dict'``,
    ``'model'`` or ``'state_dict_ema'``; a DataParallel ``module.`` prefix is stripped. Returns
    ``{torch key: float32 (or integer) numpy array}``.

    Raises:
      WeightsFileNotFoundError: no such file.
      WeightsFileError: the file is empty, damaged or truncated, not a weights file, holds pickled
        objects other than tensors and plain containers (refused without running them), or values
        that are not tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileNotFoundError(
            f"No weights file at {path!r}. Fix: check the path, or download the torchvision/timm "
            "weights (.pth or .safetensors) first."
        )
    if os.path.getsize(path) == 0:
        raise WeightsFileError(
            f"{path!r} is empty (0 bytes): the download or copy did not finish. Fix: {_RESAVE}."
        )
    raw = _safetensors_load(path) if path.endswith(".safetensors") else _torch_load(path)
    state = _unwrap(raw, path)
    out: dict[str, np.ndarray] = {}
    bad = []
    for key, value in state.items():
        array = _to_numpy(value)
        if array is None:
            bad.append(f"{key} ({type(value).__name__})")
            continue
        out[key.removeprefix("module.")] = array
    if bad:
        raise WeightsFileError(
            f"{path!r} is not a state dict of tensors: {len(bad)} value(s) are not tensors, e.g. "
            f"{', '.join(bad[:MAX_LISTED])}. Save `model.state_dict()` (torch.save or safetensors)."
        )
    return out


def _one_line(err: BaseException, marker: str = "") -> str:
    """The line of ``err``'s message containing ``marker`` (else its first), at most 200 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    picked = next((line for line in lines if marker and marker in line), lines[0])
    return picked.split(". Please")[0].rstrip(".")[:200]


def _safetensors_load(path: str) -> Mapping[str, Any]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for every malformed file
        raise WeightsFileError(
            f"{path!r} is not a readable safetensors file ({_one_line(e)}): it is damaged, truncated or "
            f"not safetensors. Fix: {_RESAVE} (or safetensors.torch.save_file)."
        ) from e


def _check_torch_format(path: str) -> None:
    """A torch.save file is a zip archive (PyTorch >= 1.6) or a pickle (protocol 2+, first byte 0x80)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise WeightsFileError(
                f"{path!r} is a damaged or truncated torch.save archive (its zip directory is missing). "
                f"Fix: {_RESAVE}."
            )
    elif not magic.startswith(b"\x80"):
        raise WeightsFileError(
            f"{path!r} is not a PyTorch weights file (neither a torch.save zip archive nor a pickle). "
            "Fix: give a state dict written by torch.save (.pth/.pt/.bin) or a .safetensors file."
        )


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise UserError(
            f"Reading {path!r} needs PyTorch (`pip install 'spinal_jax[torch]'`); "
            "or convert the file to .safetensors, which needs only the `safetensors` package."
        ) from e
    _check_torch_format(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise WeightsFileError(
                f"{path!r} is damaged or not a PyTorch weights file (torch.load: "
                f"{_one_line(e, 'WeightsUnpickler error')}). Fix: {_RESAVE}."
            ) from e
        raise WeightsFileError(
            f"Refusing to load {path!r}: it pickles objects other than tensors and plain containers, "
            "and spinal_jax never unpickles arbitrary objects (torch.load(weights_only=True) rejected "
            f"it: {_one_line(e, 'Unsupported global')}). Fix: re-save only the weights: "
            "torch.save(model.state_dict(), path) or safetensors."
        ) from e
    except (EOFError, RuntimeError, OSError) as e:
        raise WeightsFileError(
            f"{path!r} is damaged or truncated (torch.load: {_one_line(e)}). Fix: {_RESAVE}."
        ) from e


def _unwrap(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise WeightsFileError(
            f"{path!r} holds a {type(raw).__name__}, not a state dict; save `model.state_dict()`."
        )
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(raw.get(key), Mapping):
            return raw[key]
    return raw


def _to_numpy(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype.kind == "f" else value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.float()  # bfloat16 / float16 files
        return t.numpy()
    return None


# ---------------------------------------------------------------------------------------------------
# torch key <-> Flax path
# ---------------------------------------------------------------------------------------------------

_MODULE_RULES = (
    (re.compile(r"^layer(\d+)_(\d+)"), r"layer\1.\2"),
    (re.compile(r"downsample_conv"), "downsample.0"),
    (re.compile(r"downsample_bn"), "downsample.1"),
    (re.compile(r"^features_(\d+)"), r"features.\1"),
    (re.compile(r"^classifier/fc_(\d+)"), r"classifier.\1"),
)
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_TIMM_VGG = {
    "pre_logits.fc1.weight": "classifier.0.weight",
    "pre_logits.fc1.bias": "classifier.0.bias",
    "pre_logits.fc2.weight": "classifier.3.weight",
    "pre_logits.fc2.bias": "classifier.3.bias",
    "head.fc.weight": "classifier.6.weight",
    "head.fc.bias": "classifier.6.bias",
}


def torch_key(flat_key: FlatKey) -> str:
    """The torchvision state-dict key of a flattened Flax leaf ``(collection, *modules, leaf)``."""
    collection, *modules, leaf = flat_key
    module = "/".join(modules)
    for pattern, repl in _MODULE_RULES:
        module = pattern.sub(repl, module)
    return f"{module.replace('/', '.')}.{_LEAF_NAMES[(collection, leaf)]}"


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return _transpose_2d(array)
    return array


def _transpose_2d(array: np.ndarray, block: int = 512) -> np.ndarray:
    """``array.T``, contiguous; copied in cache-sized tiles, several times faster than
    ``np.ascontiguousarray(array.T)`` for VGG's 4096 x 25088 classifier."""
    rows, cols = array.shape
    if rows * cols <= block * block:
        return np.ascontiguousarray(array.T)
    out = np.empty((cols, rows), array.dtype)
    for i in range(0, rows, block):
        for j in range(0, cols, block):
            out[j : j + block, i : i + block] = array[i : i + block, j : j + block].T
    return out


def _normalise_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm VGG layout -> torchvision's (its 7x7 / 1x1 'pre_logits' convs are Linear layers at 224)."""
    out = {}
    for key, value in state.items():
        if key in _TIMM_VGG:
            key = _TIMM_VGG[key]
            if value.ndim == 4:  # (out, C, kh, kw) conv on the 7x7 map = Linear on its C,H,W flatten
                value = value.reshape(value.shape[0], -1)
        out[key] = value
    return out


def _head_classes(state: Mapping[str, np.ndarray], arch: str) -> int:
    key = "fc.weight" if head_name(arch) == "fc" else "classifier.6.weight"
    value = state.get(key)
    return int(value.shape[0]) if value is not None and value.ndim == 2 else 1000


@functools.lru_cache(maxsize=32)
def expected_layout(arch: str, num_classes: int = 1000) -> dict[str, tuple[FlatKey, tuple[int, ...]]]:
    """``{torch key: (Flax flat key, torch shape)}`` of ``arch`` with its default head."""
    _check_arch(arch)
    model = create_model(arch, num_classes, head="default")
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
    flat = traverse_util.flatten_dict(abstract)
    return {torch_key(k): (k, _torch_shape(tuple(v.shape))) for k, v in flat.items()}


def _mismatches(
    state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[FlatKey, tuple[int, ...]]]
) -> tuple[list[str], list[str], list[str]]:
    present = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = [k for k in layout if k not in present]
    unexpected = sorted(present - set(layout))
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, expected {layout[k][1]}"
        for k in layout
        if k in state and tuple(state[k].shape) != layout[k][1]
    ]
    return missing, unexpected, wrong


def detect_arch(state: Mapping[str, np.ndarray]) -> str | None:
    """The supported arch whose keys and shapes the state dict matches exactly (any class count)."""
    state = _normalise_keys(state)
    family = "vgg" if any(k.startswith("features.") for k in state) else "resnet"
    for arch in SUPPORTED_ARCHS:
        if get_spec(arch).family == family:
            if not any(_mismatches(state, expected_layout(arch, _head_classes(state, arch)))):
                return arch
    return None


def _listing(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): " + "; ".join(items[:MAX_LISTED]) + more


def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, source: str = "state dict") -> Variables:
    """A torchvision/timm state dict -> ``{'params', 'batch_stats'}`` of ``create_model(arch, C, 'default')``
    (nested dicts of float32 numpy arrays; C = the file's classifier rows, 1000 for ImageNet).

    Raises:
      StateDictMismatchError: missing or unexpected keys or wrong shapes, listing the first of each and
        naming the arch the file does match, if any.
    """
    _check_arch(arch)
    state = _normalise_keys(state)
    layout = expected_layout(arch, _head_classes(state, arch))
    missing, unexpected, wrong = _mismatches(state, layout)
    if missing or unexpected or wrong:
        found = detect_arch(state)
        hint = (
            f"\nThe file matches {found!r}: convert it with arch={found!r} (--arch {found})."
            if found
            else f"\nCheck the arch (supported: {', '.join(SUPPORTED_ARCHS)}) and that the file is a "
            "torchvision or timm state dict of it."
        )
        raise StateDictMismatchError(
            f"{source} does not fit {arch!r}:"
            + (_listing("missing keys", missing) if missing else "")
            + (_listing("unexpected keys", unexpected) if unexpected else "")
            + (_listing("wrong shapes", wrong) if wrong else "")
            + hint
        )
    flat = {k: _to_flax(state[key]).astype(np.float32, copy=False) for key, (k, _) in layout.items()}
    return traverse_util.unflatten_dict(flat)


def convert_file(path: str | os.PathLike, arch: str | None = None) -> tuple[Variables, str]:
    """Read and convert a weights file; ``arch=None`` detects it. Returns ``(variables, arch)``."""
    state = load_state_dict(path)
    if arch is None:
        arch = detect_arch(state)
        if arch is None:
            raise StateDictMismatchError(
                f"{os.fspath(path)!r} matches none of {', '.join(SUPPORTED_ARCHS)}: pass the arch "
                "explicitly to see which keys differ."
            )
    return convert_state_dict(state, arch, source=repr(os.fspath(path))), arch


# ---------------------------------------------------------------------------------------------------
# Orbax checkpoints of converted weights
# ---------------------------------------------------------------------------------------------------


def save_converted(
    directory: str | os.PathLike, variables: Variables, arch: str, extra_metadata: dict | None = None
) -> dict:
    """Write ``{'params', 'batch_stats'}`` as an Orbax StandardSave item ``state`` plus JSON ``meta``
    (``arch``, ``num_classes``, ``format``); returns the metadata. ``directory`` must not exist."""
    import orbax.checkpoint as ocp

    _check_arch(arch)
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise OutputExistsError(f"{directory!r} exists; choose a new directory or remove it first.")
    head = variables["params"][head_name(arch)]
    out_kernel = head["fc_6"]["kernel"] if "fc_6" in head else head["kernel"]
    meta = {
        "format": "spinal_jax.pretrained/1",
        "arch": arch,
        "num_classes": int(out_kernel.shape[-1]),
        "head": head_name(arch),
        **(extra_metadata or {}),
    }
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(
        directory,
        args=ocp.args.Composite(state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)),
    )
    return meta


def load_converted(directory: str | os.PathLike) -> tuple[Variables, dict]:
    """Read a checkpoint written by :func:`save_converted`: ``(variables, metadata)``."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(os.path.join(directory, "meta")):
        raise WeightsFileNotFoundError(
            f"{directory!r} is not a converted checkpoint (no 'meta' item); write one with "
            "`python -m spinal_jax.convert SRC DST --arch ARCH`."
        )
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    meta = checkpointer.restore(directory, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    layout = expected_layout(meta["arch"], int(meta["num_classes"]))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = traverse_util.unflatten_dict(
        {
            flax_key: jax.ShapeDtypeStruct(_flax_shape(shape), jnp.float32, sharding=sharding)
            for flax_key, shape in layout.values()
        }
    )
    restored = checkpointer.restore(
        directory, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )["state"]
    return restored, meta


def _flax_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(torch_shape) == 4:
        o, i, kh, kw = torch_shape
        return (kh, kw, i, o)
    if len(torch_shape) == 2:
        return (torch_shape[1], torch_shape[0])
    return torch_shape


# ---------------------------------------------------------------------------------------------------
# Into a model with a fresh head
# ---------------------------------------------------------------------------------------------------


def _infer_head(converted: Variables) -> str:
    names = sorted({head_name(arch) for arch in SUPPORTED_ARCHS})
    heads = [h for h in names if h in converted.get("params", {})]
    if len(heads) != 1:
        raise StateDictMismatchError(
            "Cannot tell the pretrained head: the converted params should have exactly one of "
            f"{names} at the top level, found {sorted(converted.get('params', {}))}."
        )
    return heads[0]


def load_pretrained_backbone(
    variables_template: Variables, converted: Variables, head: str | None = None
) -> Variables:
    """Put converted backbone weights into a model's variables, keeping its fresh head.

    Args:
      variables_template: ``model.init(...)`` of the model to fine-tune (any classes, default or spinal
        head); its head subtree (``head``) is kept as initialised.
      converted: ``{'params', 'batch_stats'}`` from :func:`convert_state_dict` / :func:`load_converted`.
      head: the head subtree name, ``'fc'`` (ResNets) or ``'classifier'`` (VGG); inferred from
        ``converted`` when None.

    Returns new variables: every non-head leaf is the converted one (cast to the template's dtype),
    the head leaves are the template's. Raises StateDictMismatchError when the template has no head
    subtree of that name, or when any non-head leaf is missing on either side (e.g. a spinal head put
    on VGG's non-existent ``fc`` is a left-over subtree) or has another shape.
    """
    head = head or _infer_head(converted)
    params = variables_template.get("params", {})
    if head not in params:
        raise StateDictMismatchError(
            f"The model has no head subtree {head!r} (top-level params: {sorted(params)}). The pretrained "
            f"classifier is {head!r}: the new head must replace exactly that subtree (name it {head!r})."
        )

    def backbone(tree: Variables) -> dict[FlatKey, Any]:
        flat = traverse_util.flatten_dict(dict(tree))
        return {k: v for k, v in flat.items() if k[0] in ("params", "batch_stats") and k[1] != head}

    want, have = backbone(variables_template), backbone(converted)
    left_over = sorted({"/".join(k) for k in want.keys() - have.keys()})
    missing = sorted({"/".join(k) for k in have.keys() - want.keys()})
    wrong = [
        f"{'/'.join(k)}: pretrained {tuple(have[k].shape)}, model {tuple(want[k].shape)}"
        for k in want.keys() & have.keys()
        if tuple(have[k].shape) != tuple(want[k].shape)
    ]
    if left_over or missing or wrong:
        raise StateDictMismatchError(
            f"The pretrained backbone does not fit this model (head {head!r} excluded):"
            + (_listing("model leaves with no pretrained value (left over)", left_over) if left_over else "")
            + (_listing("pretrained leaves the model lacks", missing) if missing else "")
            + (_listing("wrong shapes", sorted(wrong)) if wrong else "")
            + "\nBuild the model with the same arch as the weights, and give it its new head under the "
            f"name {head!r} only."
        )
    flat = traverse_util.flatten_dict(dict(variables_template))
    for key, value in want.items():
        flat[key] = jnp.asarray(have[key], dtype=value.dtype)
    return traverse_util.unflatten_dict(flat)


def init_from_pretrained(
    model: Any, variables: Variables, path: str | os.PathLike, arch: str | None = None
) -> Variables:
    """The trainer's hook for ``--config.pretrained=PATH``.

    Args:
      model: the Flax model being fine-tuned (a registry ResNet or VGG with any head and classes).
      variables: its freshly initialised variables (``model.init``), head included.
      path: an Orbax directory from ``python -m spinal_jax.convert``, or a ``.pth`` / ``.safetensors``
        torchvision/timm file (converted on the fly).
      arch: the expected arch; checked against the checkpoint's metadata (or used for a raw file)
        when given.

    Returns ``variables`` with the pretrained backbone and the model's own fresh head.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        converted, meta = load_converted(path)
        arch = arch or meta["arch"]
        if arch is not None and meta["arch"] != arch:
            raise StateDictMismatchError(
                f"{path!r} holds {meta['arch']!r} weights, but the model is {arch!r}."
            )
    else:
        converted, arch = convert_file(path, arch)
    if type(model).__module__.rsplit(".", 1)[-1] != get_spec(arch).family:
        raise StateDictMismatchError(
            f"{path!r} holds {arch!r} weights, which do not fit a {type(model).__name__} model; build the "
            f"model with create_model({arch!r}, num_classes, head=...)."
        )
    return load_pretrained_backbone(variables, converted, head=head_name(arch))
