"""The MNIST default CNN and the multi-stage "Arch2" spinal CNN (docs/SPINALNET.md, "MNIST CNN").

Both share the reference's two-conv backbone (``features``): conv1 (1->10, 5x5) -> MaxPool 2 -> ReLU
gives 10x12x12; conv2 (10->20, 5x5) -> Dropout2d(0.5) -> MaxPool 2 -> ReLU gives 20x4x4 = 320.
Heads read maps flattened channel-first (PyTorch's order), so the "first half" of the 320 features is
channels 0..9.
"""

from __future__ import annotations

from typing import ClassVar

import jax
from flax import linen as nn

from spinal_jax.layers import BlockModule, Conv, Dropout, flatten_channels_first, max_pool
from spinal_jax.models.blocks import check_image_shape
from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig, HeadedModel, SpinalHeadConfig
from spinal_jax.models.registry import register_module

INPUT_SHAPE = (28, 28, 1)

# The reference's baseline for both: Linear(320->50) -> ReLU -> Dropout(0.5) -> Linear(50->C).
_BASELINE = DefaultHeadConfig(hidden=(50,), dropout=0.5, dropout_at=(False, True))
# Spinal: k=6 sub-layers of width 8 on halves of the 320 features, no dropout or BN (the
# EMNIST-digits script used w=10).
MNIST_CNN_HEAD = HeadConfig(spinal=SpinalHeadConfig(width=8, num_layers=6), default=_BASELINE)
# Arch2: stacks on halves of the raw pixels (k=10), the conv1 map (k=8) and the conv2 map (k=8), w=30
# for MNIST (50 for EMNIST-digits / KMNIST / QMNIST, 300 for Fashion-MNIST).
MNIST_ARCH2_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(width=30, stacks=(("raw", 10), ("conv1", 8), ("conv2", 8)), stack_hidden=50),
    default=_BASELINE,
)


class MnistFeatures(BlockModule):
    """The two-conv backbone. Input ``(B, 28, 28, 1)``; returns the conv1 map ``(B, 12, 12, 10)``
    (after pool and ReLU) and the conv2 map ``(B, 4, 4, 20)``. ``bn_axis_name``: the train step's pmap
    axis (dropout masks are drawn for the global batch; there is no BatchNorm)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        conv1 = nn.relu(max_pool(Conv(10, 5, **self.dtypes, name="conv1")(x), 2))
        conv2 = Conv(20, 5, **self.dtypes, name="conv2")(conv1)
        drop = Dropout(0.5, broadcast_dims=(1, 2), axis_name=self.bn_axis_name, name="dropout2d")
        conv2 = drop(conv2, deterministic=not train)
        return conv1, nn.relu(max_pool(conv2, 2))


class MnistCNN(HeadedModel):
    """The MNIST default CNN with its baseline head or the spinal head.

    Fields: :class:`~spinal_jax.models.heads.HeadedModel`'s; ``head='default'`` is 320->50->C with
    dropout 0.5, ``'spinal'`` SpinalFC with k=6, w=8, no dropout or BN (the backbone has no BatchNorm).
    Input ``(B, 28, 28, 1)`` float images; output float32 logits ``(B, C)``.
    """

    label: ClassVar[str] = "mnist_cnn"  # the registry name, for messages
    head_cfg: HeadConfig = MNIST_CNN_HEAD

    def head_inputs(self, x: jax.Array, conv1: jax.Array, conv2: jax.Array) -> tuple[jax.Array, ...]:
        """The maps the head reads (flattened channel-first): the conv2 map ``(B, 4, 4, 20)``."""
        del x, conv1
        return (conv2,)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_image_shape(x, 1, (28, 28), self.label, "the reference's 28x28 grayscale digits")
        conv1, conv2 = MnistFeatures(**self.precision, name="features")(x, train)
        maps = self.head_inputs(x, conv1, conv2)
        return self.classify(*[flatten_channels_first(m) for m in maps], train=train)


class MnistArch2(MnistCNN):
    """The multi-stage spinal CNN "Arch2": the MNIST CNN's backbone with a stacked spinal head.

    The spinal head (:class:`~spinal_jax.models.heads.StackedSpinalHead`, children ``raw``, ``conv1``,
    ``conv2``, ``fc1``, ``fc2``) reads the pixels ``(B, 784)``, the conv1 map ``(B, 1440)`` and the conv2
    map ``(B, 320)``, all flattened channel-first: [raw (k=10), conv1 (k=8), conv2 (k=8)] (26w) ->
    Linear(26w->50) -> ReLU -> Linear(50->C). ``head='default'`` is the default CNN's baseline head
    (320->50->C) on the same backbone, i.e. the same network as ``mnist_cnn`` with ``head='default'``:
    the reference has no separate Arch2 baseline.

    Fields: :class:`~spinal_jax.models.heads.HeadedModel`'s; ``head_cfg.spinal.width`` is w of every
    stack (30 for MNIST).
    Input ``(B, 28, 28, 1)`` float images (normalised: the raw stack reads them as they are); output
    float32 logits ``(B, C)``.
    """

    label: ClassVar[str] = "mnist_arch2"
    head_cfg: HeadConfig = MNIST_ARCH2_HEAD

    def head_inputs(self, x: jax.Array, conv1: jax.Array, conv2: jax.Array) -> tuple[jax.Array, ...]:
        """The spinal head's stacks read the pixels ``(B, 28, 28, 1)``, the conv1 map ``(B, 12, 12, 10)``
        and the conv2 map ``(B, 4, 4, 20)``; the default head the conv2 map."""
        return (x, conv1, conv2) if self.head == "spinal" else (conv2,)


_MNIST = dict(input_shape=INPUT_SHAPE, num_classes=10)
register_module(
    "mnist_cnn", MnistCNN, description="MNIST default CNN (2 convs, 320 features); spinal k=6, w=8", **_MNIST
)
register_module(
    "mnist_arch2",
    MnistArch2,
    description="MNIST Arch2: spinal stacks on pixels, conv1 and conv2 maps; w=30",
    **_MNIST,
)
