"""One registry and one ``create_model`` for every architecture (as timm does).

Each family module registers its models with :func:`register_module` (a
:class:`~spinal_jax.models.heads.HeadedModel` subclass and its fixed fields) or, for any other builder,
:func:`register_model`. A builder takes ``(num_classes, head, head_cfg, **overrides)`` and returns a Flax
Linen module whose ``__call__(x, train=False)`` maps NHWC images ``(B, H, W, C)`` to logits
``(B, num_classes)``. A registry entry (:class:`ModelSpec`) also says what the model's two heads are
(``head_cfg``) and where the head lives in the parameter tree (``head_path``), for the weight converter,
fine-tuning and the model table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import linen as nn

from spinal_jax.models.heads import HEADS, HeadConfig, HeadedModel, apply_head_overrides


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture.

    Attributes:
      name: registry name, e.g. ``"vgg5"``.
      builder: ``builder(num_classes, head, head_cfg, **overrides) -> nn.Module``.
      input_shape: default input ``(H, W, C)`` of one image.
      num_classes: the class count the model is usually built with.
      family: the module (family) that defines it.
      description: one line for the model table.
      head_cfg: the family's default and spinal heads (:class:`~spinal_jax.models.heads.HeadConfig`).
      head_path: the top-level parameter (and ``batch_stats``) key of the head: ``'head'``, or
        torchvision's ``'fc'`` (ResNets) / ``'classifier'`` (VGG).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    family: str
    description: str
    head_cfg: HeadConfig = HeadConfig()
    head_path: str = "head"


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    description: str,
    head_cfg: HeadConfig,
    head_path: str = "head",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(num_classes, head, head_cfg, **overrides)`` under ``name``; its
    family is the builder's module."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        family = builder.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = ModelSpec(
            name, builder, input_shape, num_classes, family, description, head_cfg, head_path
        )
        return builder

    return wrap


def register_module(
    name: str,
    module: type[HeadedModel],
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    description: str,
    **fields: Any,
) -> None:
    """Register ``name`` as ``module(**fields, **overrides)``; the entry's ``head_cfg`` and
    ``head_path`` are the class's (its ``head_cfg`` default and its ``head_path``), its family the
    class's module. ``overrides`` may replace ``fields``."""

    def build(num_classes: int, head: str, **overrides: Any) -> HeadedModel:
        return module(**{**fields, **overrides}, num_classes=num_classes, head=head)

    build.__module__ = module.__module__
    build.__qualname__ = build.__name__ = name
    register_model(
        name,
        input_shape=input_shape,
        num_classes=num_classes,
        description=description,
        head_cfg=module.head_cfg,
        head_path=module.head_path,
    )(build)


def list_models() -> list[str]:
    """Every registered model name, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; a ValueError naming the known models otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Registered models: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def head_path(name: str) -> str:
    """The top-level parameter key of model ``name``'s head (``'head'``, ``'fc'`` or ``'classifier'``)."""
    return get_spec(name).head_path


def create_model(
    name: str, num_classes: int | None = None, head: str = "spinal", **overrides: Any
) -> nn.Module:
    """Build a registered model.

    Args:
      name: a name from :func:`list_models`.
      num_classes: output classes (default: the registry entry's).
      head: ``"default"`` (the reference's baseline head for that family) or ``"spinal"``.
      **overrides: module fields (``dtype=jnp.bfloat16``, ``bn_axis_name="batch"``,
        ``head_cfg=HeadConfig(...)``, backbone fields such as ``stage_sizes``) and head settings:
        ``spinal_width``, ``spinal_layers``, ``spinal_splits``, ``spinal_dropout``, ``spinal_bn``,
        ``spinal_activation`` and ``dropout_rate`` (the baseline head's), applied to the entry's
        ``head_cfg``.

    Raises:
      ValueError: unknown model or head, or ``num_classes < 1``.
      TypeError: an override the model does not have (as for any unexpected keyword).
    """
    spec = get_spec(name)
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r} for model {name!r}: use one of {HEADS}.")
    num_classes = spec.num_classes if num_classes is None else int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    overrides = dict(overrides)
    head_cfg = apply_head_overrides(overrides.pop("head_cfg", spec.head_cfg), overrides, name)
    return spec.builder(num_classes=num_classes, head=head, head_cfg=head_cfg, **overrides)
