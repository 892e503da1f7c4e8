"""Helpers shared by the model families: input checks and the head switch."""

from __future__ import annotations

import jax

from spinal_jax.models.heads import check_head

__all__ = ["IMAGENET_ENTRY", "check_head", "check_images"]

# Registry fields of the ImageNet-size models: torchvision's input and class count.
IMAGENET_ENTRY = {"input_shape": (224, 224, 3), "num_classes": 1000}


def check_images(x: jax.Array, channels: int, min_size: int, model: str) -> None:
    """Raise a ValueError naming the problem unless ``x`` is ``(B, H, W, channels)`` with H, W >= min_size."""
    if x.ndim != 4 or x.shape[-1] != channels or min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"{model} expects NHWC images of shape (batch, H, W, {channels}) with H, W >= {min_size}, "
            f"got shape {tuple(x.shape)}."
        )
