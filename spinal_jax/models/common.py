"""Helpers shared by the model families: input checks, the head switch and the ResNet conventions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax

from spinal_jax.layers import kaiming_normal_fan_out
from spinal_jax.models.heads import check_head

__all__ = ["IMAGENET_ENTRY", "RESNET_CONV", "check_head", "check_images", "residual_stages"]

# Registry fields of the ImageNet-size models: torchvision's input and class count.
IMAGENET_ENTRY = {"input_shape": (224, 224, 3), "num_classes": 1000}
# Conv keywords of every ResNet conv (torchvision's and the CIFAR one): no bias, He normal fan_out init.
RESNET_CONV = {"use_bias": False, "kernel_init": kaiming_normal_fan_out}


def residual_stages(stage_sizes: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """``(stage, block, strides)`` of every residual block, stage by stage, with ``stage_sizes[i]``
    blocks in stage i: stride 2 in the first block of every stage but the first, 1 elsewhere."""
    for i, blocks in enumerate(stage_sizes):
        for j in range(blocks):
            yield i, j, 2 if (i > 0 and j == 0) else 1


def check_images(x: jax.Array, channels: int, min_size: int, model: str) -> None:
    """Raise a ValueError naming the problem unless ``x`` is ``(B, H, W, channels)`` with H, W >= min_size."""
    if x.ndim != 4 or x.shape[-1] != channels or min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"{model} expects NHWC images of shape (batch, H, W, {channels}) with H, W >= {min_size}, "
            f"got shape {tuple(x.shape)}."
        )
