"""A small conv net with BatchNorm (synchronised over ``bn_axis_name``) for the step tests."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn


class TinyBNNet(nn.Module):
    num_classes: int = 10
    bn_axis_name: str | None = None
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False, dtype=self.dtype)(x)  # BN follows
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            axis_name=self.bn_axis_name if train else None,
            dtype=self.dtype,
        )(x)
        x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
