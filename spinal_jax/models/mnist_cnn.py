"""The MNIST default CNN and the multi-stage "Arch2" spinal CNN (spec §2.1, §2.2, table 1.3).

Both share the reference's two-conv backbone (``features``): conv1 (1->10, 5x5) -> MaxPool 2 -> ReLU
gives 10x12x12; conv2 (10->20, 5x5) -> Dropout2d(0.5) -> MaxPool 2 -> ReLU gives 20x4x4 = 320.
Heads read maps flattened channel-first (PyTorch's order), so the "first half" of the 320 features is
channels 0..9.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from spinal_jax.layers import Conv, Dense, SpinalFC, flatten_channels_first, max_pool
from spinal_jax.models.blocks import MLPHead, check_image_shape
from spinal_jax.models.common import check_head
from spinal_jax.models.registry import register_model

Dtype = Any
INPUT_SHAPE = (28, 28, 1)


def _check_input(x: jax.Array, model: str) -> None:
    check_image_shape(x, 1, (28, 28), model, "the reference's 28x28 grayscale digits")


class MnistFeatures(nn.Module):
    """The two-conv backbone. Input ``(B, 28, 28, 1)``; returns the conv1 map ``(B, 12, 12, 10)``
    (after pool and ReLU) and the conv2 map ``(B, 4, 4, 20)``."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        conv1 = Conv(10, 5, dtype=self.dtype, param_dtype=self.param_dtype, name="conv1")(x)
        conv1 = nn.relu(max_pool(conv1, 2))
        conv2 = Conv(20, 5, dtype=self.dtype, param_dtype=self.param_dtype, name="conv2")(conv1)
        conv2 = nn.Dropout(0.5, broadcast_dims=(1, 2), name="dropout2d")(conv2, deterministic=not train)
        return conv1, nn.relu(max_pool(conv2, 2))


def _default_head(num_classes: int, dtype: Dtype | None, param_dtype: Dtype) -> MLPHead:
    """The reference's baseline: Linear(320->50) -> ReLU -> Dropout(0.5) -> Linear(50->C)."""
    return MLPHead(
        num_classes, hidden=(50,), dropout=(0.0, 0.5), dtype=dtype, param_dtype=param_dtype, name="head"
    )


class MnistCNN(nn.Module):
    """The MNIST default CNN with its baseline head or the spinal head (k=6 sub-layers on halves of 320).

    Attributes:
      num_classes: C.
      head: 'default' (320->50->C with dropout 0.5) or 'spinal' (SpinalFC, no dropout or BN).
      spinal_width: w of each sub-layer (8 for MNIST; the EMNIST-digits script used 10).
      spinal_layers: k (6 in the reference).
      dtype: compute dtype (None = float32); param_dtype: parameter dtype.
      bn_axis_name: unused (the model has no BatchNorm); kept for the common model interface.
    Input ``(B, 28, 28, 1)`` float images; output float32 logits ``(B, C)``.
    """

    num_classes: int = 10
    head: str = "spinal"
    spinal_width: int = 8
    spinal_layers: int = 6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_head(self.head, "mnist_cnn")
        _check_input(x, "mnist_cnn")
        _, conv2 = MnistFeatures(dtype=self.dtype, param_dtype=self.param_dtype, name="features")(x, train)
        features = flatten_channels_first(conv2)  # (B, 320)
        if self.head == "spinal":
            logits = SpinalFC(
                self.spinal_width,
                self.num_classes,
                num_layers=self.spinal_layers,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="head",
            )(features, train)
        else:
            logits = _default_head(self.num_classes, self.dtype, self.param_dtype)(features, train)
        return logits.astype(jnp.float32)


class Arch2Head(nn.Module):
    """Arch2's head: three spinal stacks (no readout each) on halves of the raw pixels (k=10), the
    conv1 map (k=8) and the conv2 map (k=8), concatenated as [raw, conv1, conv2] (26w) ->
    Linear(26w->50) -> ReLU -> Linear(50->C).

    Children ``raw``, ``conv1``, ``conv2`` (SpinalFC), ``fc1``, ``fc2``. Inputs ``(B, 784)``,
    ``(B, 1440)``, ``(B, 320)``, all flattened channel-first; output ``(B, C)``.
    """

    num_classes: int
    width: int = 30
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, raw: jax.Array, conv1: jax.Array, conv2: jax.Array, train: bool = False) -> jax.Array:
        def stack(layers: int, name: str) -> SpinalFC:
            return SpinalFC(
                self.width, None, num_layers=layers, dtype=self.dtype, param_dtype=self.param_dtype, name=name
            )

        z = jnp.concatenate(
            [stack(10, "raw")(raw, train), stack(8, "conv1")(conv1, train), stack(8, "conv2")(conv2, train)],
            axis=-1,
        )
        z = nn.relu(Dense(50, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(z))
        return Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(z)


class MnistArch2(nn.Module):
    """The multi-stage spinal CNN "Arch2": the MNIST CNN's backbone with :class:`Arch2Head`.

    ``head='default'`` is the default CNN's baseline head (320->50->C) on the same backbone, i.e. the
    same network as ``mnist_cnn`` with ``head='default'``: the reference has no separate Arch2 baseline.

    Attributes:
      num_classes: C.
      head: 'default' or 'spinal'.
      spinal_width: w of every stack (30 for MNIST; 50 EMNIST-digits/KMNIST/QMNIST; 300 Fashion).
      dtype / param_dtype / bn_axis_name: as :class:`MnistCNN`.
    Input ``(B, 28, 28, 1)`` float images (normalised: the raw stack reads them as they are); output
    float32 logits ``(B, C)``.
    """

    num_classes: int = 10
    head: str = "spinal"
    spinal_width: int = 30
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_head(self.head, "mnist_arch2")
        _check_input(x, "mnist_arch2")
        conv1, conv2 = MnistFeatures(dtype=self.dtype, param_dtype=self.param_dtype, name="features")(
            x, train
        )
        if self.head == "spinal":
            logits = Arch2Head(
                self.num_classes,
                width=self.spinal_width,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="head",
            )(flatten_channels_first(x), flatten_channels_first(conv1), flatten_channels_first(conv2), train)
        else:
            logits = _default_head(self.num_classes, self.dtype, self.param_dtype)(
                flatten_channels_first(conv2), train
            )
        return logits.astype(jnp.float32)


@register_model(
    "mnist_cnn",
    input_shape=INPUT_SHAPE,
    num_classes=10,
    description="MNIST default CNN (2 convs, 320 features); spinal k=6, w=8",
)
def mnist_cnn(num_classes: int, head: str, **overrides: Any) -> MnistCNN:
    return MnistCNN(num_classes=num_classes, head=head, **overrides)


@register_model(
    "mnist_arch2",
    input_shape=INPUT_SHAPE,
    num_classes=10,
    description="MNIST Arch2: spinal stacks on pixels, conv1 and conv2 maps; w=30",
)
def mnist_arch2(num_classes: int, head: str, **overrides: Any) -> MnistArch2:
    return MnistArch2(num_classes=num_classes, head=head, **overrides)
