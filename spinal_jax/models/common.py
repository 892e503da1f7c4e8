"""Helpers shared by the model families: input checks and the head switch."""

from __future__ import annotations

import jax

from spinal_jax.models.heads import check_head

__all__ = ["check_head", "check_images"]


def check_images(x: jax.Array, channels: int, min_size: int, model: str) -> None:
    """Raise a ValueError naming the problem unless ``x`` is ``(B, H, W, channels)`` with H, W >= min_size."""
    if x.ndim != 4 or x.shape[-1] != channels or min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"{model} expects NHWC images of shape (batch, H, W, {channels}) with H, W >= {min_size}, "
            f"got shape {tuple(x.shape)}."
        )
