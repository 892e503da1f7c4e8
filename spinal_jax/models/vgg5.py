"""VGG-5 and SpinalVGG-5, the MNIST_VGG family ("VGG-5" has 10 conv layers in 4 blocks; docs/SPINALNET.md,
"VGG-5").

Backbone (``features``): conv3x3 (pad 1, with bias) -> BN -> ReLU, blocks [64, 64] M [128, 128] M
[256, 256, 256] M [256, 256, 256] M; 28 -> 14 -> 7 -> 3 -> 1, so 256 features. Convs are initialised
N(0, sqrt(2 / (9 * out))) (He normal, fan_out, not truncated) with PyTorch's default bias, BN 1/0,
Linear layers PyTorch's default.
"""

from __future__ import annotations

import jax
from flax import linen as nn

from spinal_jax.layers import flatten_channels_first, kaiming_normal_fan_out
from spinal_jax.models.blocks import M, VGGFeatures, check_image_shape
from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig, HeadedModel, SpinalHeadConfig
from spinal_jax.models.registry import register_module

VGG5_CONFIG: tuple[int | str, ...] = (64, 64, M, 128, 128, M, 256, 256, 256, M, 256, 256, 256, M)
# Four floor-mode 2x2 pools leave a 1x1 map (256 features, as the reference) for 16 <= H, W <= 31.
INPUT_SIZES = (16, 31)
# Baseline: Dropout(.5) -> Linear(256->512) -> BN1d -> ReLU -> Dropout(.5) -> Linear(512->C).
# Spinal: SpinalFC on halves of 256, k=4, w=128, dropout 0.5 before every Linear, BN.
VGG5_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(width=128, num_layers=4, dropout=0.5, bn=True),
    default=DefaultHeadConfig(hidden=(512,), dropout=0.5, dropout_at=(True, True), bn=True),
)


class VGG5(HeadedModel):
    """VGG-5 with the reference's baseline classifier or the SpinalVGG-5 head.

    Fields: :class:`~spinal_jax.models.heads.HeadedModel`'s; C is 10 for MNIST-like sets, 47
    EMNIST-balanced, 62 EMNIST-letters. ``head='default'``: Dropout(.5) -> Linear(256->512) -> BN1d ->
    ReLU -> Dropout(.5) -> Linear(512->C); ``'spinal'``: SpinalFC on halves of 256, k=4, w=128, dropout
    0.5 before every Linear, BN.
    Input ``(B, H, W, 1)`` float images with 16 <= H, W <= 31 (28x28 in the reference); output
    float32 logits ``(B, C)``.
    """

    head_cfg: HeadConfig = VGG5_HEAD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_image_shape(x, 1, INPUT_SIZES, "vgg5", "the backbone must reduce them to 256x1x1")
        init = kaiming_normal_fan_out
        x = VGGFeatures(VGG5_CONFIG, kernel_init=init, **self.precision, name="features")(x, train)
        x = flatten_channels_first(x)  # (B, 256)
        return self.classify(x, train=train)


register_module(
    "vgg5",
    VGG5,
    input_shape=(28, 28, 1),
    num_classes=10,
    description="MNIST_VGG 'VGG-5' (10 convs, 256 features); spinal k=4, w=128, dropout+BN",
)
