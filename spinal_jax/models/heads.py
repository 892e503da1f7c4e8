"""The classifier head of every model family: one config, one factory.

Every registered model is a backbone followed by one head submodule, either the family's baseline
classifier (``head='default'``) or the spinal head (``head='spinal'``). What the two heads look like
is data, a :class:`HeadConfig` (the family's defaults are in its registry entry); :func:`make_head`
builds either from it, for every family. Where the head lives in the parameter tree is the registry
entry's ``head_path`` (see :mod:`spinal_jax.models.registry`).

``create_model`` still takes the spinal options as keyword overrides (``spinal_width=512``,
``spinal_dropout=0.5``, ...) and ``dropout_rate`` for the baseline head's dropout: see
:func:`apply_head_overrides`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from spinal_jax.layers import BlockModule, Dense, Dropout, Initializer, SpinalFC

Dtype = Any

HEADS = ("default", "spinal")

# create_model keyword -> SpinalHeadConfig field.
SPINAL_OVERRIDES: dict[str, str] = {
    "spinal_width": "width",
    "spinal_layers": "num_layers",
    "spinal_splits": "num_splits",
    "spinal_dropout": "dropout",
    "spinal_bn": "bn",
    "spinal_activation": "activation",
}
# create_model keyword -> DefaultHeadConfig field.
DEFAULT_OVERRIDES: dict[str, str] = {"dropout_rate": "dropout"}

_vgg_linear_init = nn.initializers.normal(0.01)  # torchvision VGG: Linear N(0, 0.01), bias 0


@dataclasses.dataclass(frozen=True)
class SpinalHeadConfig:
    """The spinal head's options (:class:`~spinal_jax.layers.SpinalFC`).

    Attributes:
      width: w, the width of each sub-layer; None = ``class_widths`` by the class count.
      class_widths: ``(w for C <= 10, w for C > 10)``, used when ``width`` is None.
      num_layers: k, the number of sub-layers.
      num_splits: n, the number of contiguous input chunks (2 = halves).
      dropout: dropout before every Linear, the readout included.
      bn: BatchNorm1d after each sub-layer's Linear.
      activation: 'relu', 'leaky_relu' or 'identity'.
      spatial: the input is a ``(B, H, W, C)`` map and sub-layer i reads the C-vector at position
        i mod H*W (the CIFAR ResNet's head).
      share_weights: sub-layers 2..k share one Linear.
      zero_readout_bias: the readout bias starts at zero (otherwise PyTorch's default).
      stacks: the multi-input head (MNIST "Arch2") when not empty: ``((name, k), ...)``, one spinal
        stack without readout per input, concatenated, then Linear(-> ``stack_hidden``) -> ReLU ->
        Linear(-> C).
      stack_hidden: hidden width after the stacks.
    """

    width: int | None = None
    class_widths: tuple[int, int] | None = None
    num_layers: int = 4
    num_splits: int = 2
    dropout: float = 0.0
    bn: bool = False
    activation: str = "relu"
    spatial: bool = False
    share_weights: bool = False
    zero_readout_bias: bool = False
    stacks: tuple[tuple[str, int], ...] = ()
    stack_hidden: int = 50

    def resolved_width(self, num_classes: int) -> int:
        """``width``, or the class-count rule of ``class_widths`` when ``width`` is None."""
        if self.width is not None:
            return self.width
        if self.class_widths is None:
            raise ValueError("SpinalHeadConfig: give a width (or class_widths).")
        small, large = self.class_widths
        return small if num_classes <= 10 else large

    def tunable(self) -> tuple[str, ...]:
        """The fields ``create_model``'s ``spinal_*`` overrides may set for this head."""
        fixed = {"num_layers"} if self.stacks else ({"num_splits"} if self.spatial else set())
        return tuple(f for f in SPINAL_OVERRIDES.values() if f not in fixed)


@dataclasses.dataclass(frozen=True)
class DefaultHeadConfig:
    """A family's baseline classifier: Linear layers with ReLU between them.

    Attributes:
      hidden: hidden widths; ``()`` = one Linear, the head module itself.
      dropout: the dropout rate.
      dropout_at: for each Linear (``len(hidden) + 1``), whether ``dropout`` is applied before it.
      bn: BatchNorm1d after each hidden Linear.
      zero_bias: Linear biases start at zero (otherwise PyTorch's default).
      layout: 'torch' (children ``fc_0``, ``fc_1``, ...; PyTorch's init) or 'torchvision_vgg'
        (torchvision's VGG classifier: children ``fc_0``, ``fc_3``, ``fc_6``, Linear N(0, 0.01), bias 0).
    """

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    dropout_at: tuple[bool, ...] = (False,)
    bn: bool = False
    zero_bias: bool = False
    layout: str = "torch"

    def rates(self) -> tuple[float, ...]:
        """The dropout rate before each Linear."""
        if len(self.dropout_at) != len(self.hidden) + 1:
            raise ValueError(
                f"DefaultHeadConfig: dropout_at needs one entry per Linear ({len(self.hidden) + 1}), "
                f"got {len(self.dropout_at)}."
            )
        return tuple(self.dropout if at else 0.0 for at in self.dropout_at)

    def tunable(self) -> tuple[str, ...]:
        """The fields ``create_model``'s overrides may set (``dropout`` only where there is dropout)."""
        return ("dropout",) if any(self.dropout_at) else ()


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Both heads of a model: ``spinal`` (``head='spinal'``) and ``default`` (``head='default'``)."""

    spinal: SpinalHeadConfig = SpinalHeadConfig()
    default: DefaultHeadConfig = DefaultHeadConfig()


class MLPHead(BlockModule):
    """A plain fully-connected classifier: per hidden width Dropout -> Dense -> [BN] -> ReLU, then
    Dropout -> Dense(num_classes).

    Attributes:
      num_classes: C.
      hidden: hidden widths, e.g. ``(1024, 512)``.
      dropout: one rate before each Dense (``len(hidden) + 1`` of them; 0 = no dropout there).
      use_bn: BatchNorm1d after each hidden Dense.
      bias_init: Dense bias initialiser (None = PyTorch's).
      dtype, param_dtype, bn_axis_name: :class:`~spinal_jax.layers.BlockModule`'s.
    Children ``fc_{i}`` and ``bn_{i}``. Input ``(B, D)``, output ``(B, num_classes)``.
    """

    num_classes: int
    hidden: Sequence[int]
    dropout: Sequence[float]
    use_bn: bool = False
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.dropout) != len(self.hidden) + 1:
            raise ValueError(
                f"MLPHead: give one dropout rate per Dense ({len(self.hidden) + 1}), got {len(self.dropout)}."
            )
        widths = [*self.hidden, self.num_classes]
        for i, (width, rate) in enumerate(zip(widths, self.dropout, strict=True)):
            if rate > 0:
                drop = Dropout(rate, axis_name=self.bn_axis_name, name=f"dropout_{i}")
                x = drop(x, deterministic=not train)
            x = Dense(width, bias_init=self.bias_init, **self.dtypes, name=f"fc_{i}")(x)
            if i == len(self.hidden):
                break
            if self.use_bn:
                x = self.norm(train, f"bn_{i}")(x)
            x = nn.relu(x)
        return x


class LinearHead(Dense):
    """One Linear layer as a head, called like the others: ``head(x, train)``. Input ``(B, D)``,
    output ``(B, features)``; parameters ``kernel`` and ``bias`` of the head module itself."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or BatchNorm
        return super().__call__(x)


class VGGClassifier(BlockModule):
    """torchvision's VGG classifier: Linear(D, h) ReLU Dropout Linear(h, h) ReLU Dropout Linear(h, C),
    Linear init N(0, 0.01), bias 0; children ``fc_0``, ``fc_3``, ``fc_6``. Input ``(B, D)``, output
    ``(B, C)``. ``bn_axis_name``: the train step's pmap axis (dropout masks are drawn for the global
    batch; there is no BatchNorm)."""

    num_classes: int
    hidden: int = 4096
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def dense(features: int, name: str) -> Dense:
            init = {"kernel_init": _vgg_linear_init, "bias_init": nn.initializers.zeros}
            return Dense(features, **init, **self.dtypes, name=name)

        for name in ("fc_0", "fc_3"):
            x = nn.relu(dense(self.hidden, name)(x))
            x = Dropout(self.dropout_rate, axis_name=self.bn_axis_name)(x, deterministic=not train)
        return dense(self.num_classes, "fc_6")(x)


class StackedSpinalHead(BlockModule):
    """Spinal stacks (no readout each) on several inputs, concatenated (``sum(k) * w`` features) ->
    Linear(``cfg.stack_hidden``) -> ReLU -> Linear(C) (the MNIST "Arch2" head).

    Children: one :class:`~spinal_jax.layers.SpinalFC` per ``cfg.stacks`` entry ``(name, k)``, named by
    it, then ``fc1`` and ``fc2``. Inputs ``(B, D_j)``, one per stack in the order of ``cfg.stacks``;
    output ``(B, C)``.
    """

    num_classes: int
    cfg: SpinalHeadConfig
    width: int

    @nn.compact
    def __call__(self, *inputs: jax.Array, train: bool = False) -> jax.Array:
        if len(inputs) != len(self.cfg.stacks):
            raise ValueError(f"StackedSpinalHead: {len(self.cfg.stacks)} stacks but {len(inputs)} inputs.")
        parts = [
            _spinal_fc(self.cfg, self.width, None, layers, self.precision, name)(x, train)
            for (name, layers), x in zip(self.cfg.stacks, inputs, strict=True)
        ]
        z = Dense(self.cfg.stack_hidden, **self.dtypes, name="fc1")(jnp.concatenate(parts, axis=-1))
        return Dense(self.num_classes, **self.dtypes, name="fc2")(nn.relu(z))


def check_head(head: str, model: str) -> None:
    """Raise a ValueError naming ``model`` unless ``head`` is one of :data:`HEADS`."""
    if head not in HEADS:
        raise ValueError(f"{model}: unknown head {head!r}, use one of {HEADS}.")


def _spinal_fc(
    cfg: SpinalHeadConfig,
    width: int,
    num_classes: int | None,
    num_layers: int,
    precision: Mapping[str, Any],
    name: str,
) -> SpinalFC:
    return SpinalFC(
        width,
        num_classes,
        num_layers=num_layers,
        num_splits=cfg.num_splits,
        spatial=cfg.spatial,
        activation=cfg.activation,
        dropout_rate=cfg.dropout,
        use_bn=cfg.bn,
        share_weights=cfg.share_weights,
        readout_bias_init=nn.initializers.zeros if cfg.zero_readout_bias else None,
        **precision,
        name=name,
    )


def _spinal_head(
    cfg: SpinalHeadConfig, num_classes: int, precision: Mapping[str, Any], name: str
) -> nn.Module:
    width = cfg.resolved_width(num_classes)
    if cfg.stacks:
        return StackedSpinalHead(num_classes, cfg, width, **precision, name=name)
    return _spinal_fc(cfg, width, num_classes, cfg.num_layers, precision, name)


def _default_head(
    cfg: DefaultHeadConfig, num_classes: int, precision: Mapping[str, Any], name: str
) -> nn.Module:
    rates = cfg.rates()
    bias_init = nn.initializers.zeros if cfg.zero_bias else None
    dtypes = {k: precision[k] for k in ("dtype", "param_dtype")}
    if cfg.layout == "torchvision_vgg":
        if len(set(cfg.hidden)) != 1 or len(cfg.hidden) != 2:
            raise ValueError(f"torchvision's VGG classifier has two equal hidden widths, got {cfg.hidden}.")
        return VGGClassifier(num_classes, cfg.hidden[0], cfg.dropout, **precision, name=name)
    if cfg.layout != "torch":
        raise ValueError(f"Unknown head layout {cfg.layout!r}: use 'torch' or 'torchvision_vgg'.")
    if not cfg.hidden:
        if rates[0]:
            raise ValueError("A single-Linear default head has no dropout; use hidden widths for it.")
        return LinearHead(num_classes, bias_init=bias_init, **dtypes, name=name)
    return MLPHead(num_classes, cfg.hidden, rates, use_bn=cfg.bn, bias_init=bias_init, **precision, name=name)


def make_head(
    kind: str,
    cfg: HeadConfig,
    num_classes: int,
    *,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    bn_axis_name: str | None = None,
    name: str = "head",
) -> nn.Module:
    """The one head factory: the baseline classifier or the spinal head described by ``cfg``.

    Args:
      kind: 'default' or 'spinal'.
      cfg: both heads' settings.
      num_classes: C.
      dtype: compute dtype (None = float32); param_dtype: parameter dtype.
      bn_axis_name: pmap axis over which the head's BatchNorm statistics are averaged in training.
      name: the head's module name, i.e. its top-level parameter path.

    Returns a module called as ``head(features, train)`` (``(B, D)``, or ``(B, H, W, C)`` for the
    spatial spinal head; one input per stack for the stacked head, ``head(*inputs, train=train)``)
    that returns logits ``(B, C)``. Call it inside a compact method: it becomes a child there.
    """
    precision = dict(dtype=dtype, param_dtype=param_dtype, bn_axis_name=bn_axis_name)
    if kind == "spinal":
        return _spinal_head(cfg.spinal, num_classes, precision, name)
    if kind == "default":
        return _default_head(cfg.default, num_classes, precision, name)
    raise ValueError(f"Unknown head {kind!r}: use one of {HEADS}.")


class HeadedModel(BlockModule):
    """The base of every registered model: the fields they share and the head at the end.

    Attributes:
      num_classes: C.
      head: 'default' (the family's baseline classifier) or 'spinal'.
      head_cfg: both heads' settings; each family sets its own default (its registry entry's).
      dtype, param_dtype, bn_axis_name: :class:`~spinal_jax.layers.BlockModule`'s (keyword-only).
    A subclass's ``__call__(x, train=False)`` maps images to float32 logits ``(B, C)``, ending with
    :meth:`classify`; its class constant ``head_path`` names the head module (the top-level parameter
    key of the head, also the registry entry's ``head_path``).
    """

    head_path: ClassVar[str] = "head"
    num_classes: int = 10
    head: str = "spinal"
    head_cfg: HeadConfig = HeadConfig()

    def __post_init__(self) -> None:
        check_head(self.head, type(self).__name__)
        super().__post_init__()

    def classify(self, *features: jax.Array, train: bool) -> jax.Array:
        """Float32 logits ``(B, C)`` of the head (:func:`make_head`, a child named ``head_path``) on
        ``features`` (one array, or one per stack for the stacked spinal head)."""
        module = make_head(self.head, self.head_cfg, self.num_classes, **self.precision, name=self.head_path)
        return module(*features, train=train).astype(jnp.float32)


def apply_head_overrides(cfg: HeadConfig, overrides: dict[str, Any], model: str) -> HeadConfig:
    """Move the head keywords out of ``overrides`` (in place) into a copy of ``cfg``.

    ``spinal_width``, ``spinal_layers``, ``spinal_splits``, ``spinal_dropout``, ``spinal_bn`` and
    ``spinal_activation`` set the spinal head's fields, ``dropout_rate`` the baseline head's dropout.
    Raises TypeError for one of them that ``model``'s head cannot honour (e.g. ``spinal_layers`` on a
    head whose sub-layer counts are fixed), as for any other unknown keyword.
    """
    spinal = _pick(overrides, SPINAL_OVERRIDES, cfg.spinal.tunable(), model)
    default = _pick(overrides, DEFAULT_OVERRIDES, cfg.default.tunable(), model)
    return HeadConfig(
        spinal=dataclasses.replace(cfg.spinal, **spinal),
        default=dataclasses.replace(cfg.default, **default),
    )


def _pick(
    overrides: dict[str, Any], keywords: Mapping[str, str], tunable: tuple[str, ...], model: str
) -> dict[str, Any]:
    picked = {}
    for keyword, field in keywords.items():
        if keyword not in overrides:
            continue
        if field not in tunable:
            accepted = [k for k, f in keywords.items() if f in tunable]
            raise TypeError(
                f"{model}: unexpected keyword argument {keyword!r}: its head has no such setting "
                f"(head keywords it takes: {', '.join(accepted) or 'none'})."
            )
        picked[field] = overrides.pop(keyword)
    return picked
