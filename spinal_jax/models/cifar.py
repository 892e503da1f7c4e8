"""The CIFAR-10/100 families of the reference: the "CNN_dropout" CNN, VGG-11/13/16/19-BN for 32x32
inputs, and the reference's non-standard ResNet-18/34, each with its baseline head or its spinal head
(docs/SPINALNET.md, "CIFAR CNN", "CIFAR VGG", "CIFAR ResNet"). Every model is ``features`` (backbone)
followed by ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import linen as nn

from spinal_jax.layers import BlockModule, Dropout, flatten_channels_first, max_pool
from spinal_jax.models.blocks import ConvBN, VGGFeatures, check_image_shape
from spinal_jax.models.common import RESNET_CONV, residual_stages
from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig, HeadedModel, SpinalHeadConfig
from spinal_jax.models.registry import register_module
from spinal_jax.models.vgg import VGG_CONFIGS

INPUT_SHAPE = (32, 32, 3)
_EXACT_32 = (32, 32)

# Each spinal width rule below is the reference's: w for CIFAR-10 (C <= 10), w for CIFAR-100.

# Baseline: Dropout(.1) -> 4096->1024 -> ReLU -> 1024->512 -> ReLU -> Dropout(.1) -> 512->C.
# Spinal: halves of 4096, k=4, w=128/256, dropout 0.1 before every Linear, no BN.
CIFAR_CNN_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(class_widths=(128, 256), num_layers=4, dropout=0.1),
    default=DefaultHeadConfig(hidden=(1024, 512), dropout=0.1, dropout_at=(True, False, True)),
)
# Baseline: 512->4096 -> ReLU -> Dropout -> 4096->4096 -> ReLU -> Dropout -> 4096->C.
# Spinal: halves of 512, k=4, w=512, dropout 0.5 before every Linear, no BN.
CIFAR_VGG_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(width=512, num_layers=4, dropout=0.5),
    default=DefaultHeadConfig(hidden=(4096, 4096), dropout=0.5, dropout_at=(False, True, True)),
)
# Baseline: Linear(256->C) with a zero bias. Spinal: one spatial position of the 256x2x2 map per
# sub-layer, k=4, w=256/512, no dropout or BN, zero readout bias (its sub-layer biases keep PyTorch's
# default).
CIFAR_RESNET_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(class_widths=(256, 512), num_layers=4, spatial=True, zero_readout_bias=True),
    default=DefaultHeadConfig(zero_bias=True),
)


# ----------------------------------------------------------------------------------------------
# CNN_dropout

# (channels, BatchNorm?) of each conv3x3, per stage; every stage ends with a 2x2 max-pool.
_CNN_STAGES = (((32, True), (64, False)), ((128, True), (128, False)), ((256, True), (256, False)))


class CifarCNNFeatures(BlockModule):
    """conv3x3 pad 1 throughout: [3->32, BN, ReLU, 32->64, ReLU] M [64->128, BN, ReLU, 128->128, ReLU]
    M Dropout2d(0.05) [128->256, BN, ReLU, 256->256, ReLU] M. ``(B, 32, 32, 3) -> (B, 4, 4, 256)``.
    Fields: :class:`~spinal_jax.layers.BlockModule`'s."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for stage, convs in enumerate(_CNN_STAGES):
            for j, (features, use_bn) in enumerate(convs):
                x = ConvBN(features, use_bn=use_bn, **self.precision, name=f"block{stage}_{j}")(x, train)
            x = max_pool(x, 2)
            if stage == 1:
                drop = Dropout(0.05, broadcast_dims=(1, 2), axis_name=self.bn_axis_name, name="dropout2d")
                x = drop(x, deterministic=not train)
        return x


class CifarCNN(HeadedModel):
    """The CIFAR "CNN_dropout" with its baseline FC stack or the spinal head on halves of 4096.

    Fields: :class:`~spinal_jax.models.heads.HeadedModel`'s. ``head='default'``: Dropout(.1) ->
    4096->1024 -> ReLU -> 1024->512 -> ReLU -> Dropout(.1) -> 512->C; ``'spinal'``: SpinalFC, halves of
    4096, k=4, dropout 0.1 before every Linear, no BN; w = 128 for C <= 10, 256 otherwise, unless
    ``head_cfg.spinal.width`` is set.
    Input ``(B, 32, 32, 3)`` float images; output float32 logits ``(B, C)``.
    """

    head_cfg: HeadConfig = CIFAR_CNN_HEAD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_image_shape(x, 3, _EXACT_32, "cifar_cnn", "its heads read the 256x4x4 map of 32x32 images")
        x = CifarCNNFeatures(**self.precision, name="features")(x, train)
        x = flatten_channels_first(x)  # (B, 4096), PyTorch order: the first half is channels 0..127
        return self.classify(x, train=train)


# ----------------------------------------------------------------------------------------------
# VGG-BN for 32x32


class CifarVGG(HeadedModel):
    """VGG-BN for 32x32 images (cfgs A/B/D/E; conv3x3 pad 1 with bias + BN + ReLU, PyTorch default init),
    512x1x1 features, with the reference's baseline classifier or its spinal head.

    Attributes (with :class:`~spinal_jax.models.heads.HeadedModel`'s):
      cfg: channel counts and 'M' pools (``spinal_jax.models.vgg.VGG_CONFIGS``).
    ``head='default'``: 512->4096 -> ReLU -> Dropout -> 4096->4096 -> ReLU -> Dropout -> 4096->C;
    ``'spinal'``: SpinalFC on halves of 512, k=4, w=512, dropout 0.5 before every Linear, no BN.
    Input ``(B, H, W, 3)`` float images with 32 <= H, W <= 63 (the five pools must leave 1x1); output
    float32 logits ``(B, C)``.
    """

    cfg: Sequence[int | str] = VGG_CONFIGS["vgg19_bn"]
    head_cfg: HeadConfig = CIFAR_VGG_HEAD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        label = f"cifar_vgg{sum(v != 'M' for v in self.cfg) + 3}_bn"
        check_image_shape(x, 3, (32, 63), label, "the backbone must reduce them to 512x1x1")
        x = VGGFeatures(self.cfg, **self.precision, name="features")(x, train)
        x = flatten_channels_first(x)  # (B, 512)
        return self.classify(x, train=train)


# ----------------------------------------------------------------------------------------------
# The reference's CIFAR ResNet


class CifarBasicBlock(BlockModule):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the residual, with **no** ReLU after the addition.
    The residual is downsampled by a 3x3 stride conv (no bias) + BN when the shape changes.
    Fields ``features``, ``strides`` and :class:`~spinal_jax.layers.BlockModule`'s.
    Input ``(B, H, W, C_in)``, output ``(B, H / strides, W / strides, features)``."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv_bn(strides: int, relu: bool, name: str) -> ConvBN:
            return ConvBN(
                self.features, strides=strides, relu=relu, **RESNET_CONV, **self.precision, name=name
            )

        y = conv_bn(self.strides, True, "conv1")(x, train)
        y = conv_bn(1, False, "conv2")(y, train)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv_bn(self.strides, False, "downsample")(x, train)
        return y + x


class CifarResNetFeatures(BlockModule):
    """Stem conv3x3 (3->32, no bias) -> BN -> ReLU -> Dropout2d(``stem_dropout``, 0.02), then stages of
    :class:`CifarBasicBlock` with 32, 64, 128, 256 channels (strides 1, 2, 2, 2).
    Fields ``stage_sizes``, ``stem_dropout`` and :class:`~spinal_jax.layers.BlockModule`'s.
    ``(B, 32, 32, 3) -> (B, 4, 4, 256)``."""

    stage_sizes: Sequence[int]
    stem_dropout: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.stage_sizes) != 4:
            raise ValueError(
                f"CIFAR ResNet: give 4 stage sizes (blocks per stage), got {tuple(self.stage_sizes)}."
            )
        x = ConvBN(32, **RESNET_CONV, **self.precision, name="stem")(x, train)
        drop = Dropout(self.stem_dropout, (1, 2), axis_name=self.bn_axis_name, name="dropout2d")  # Dropout2d
        x = drop(x, deterministic=not train)
        for i, j, strides in residual_stages(self.stage_sizes):
            width = (32, 64, 128, 256)[i]
            x = CifarBasicBlock(width, strides, **self.precision, name=f"stage{i + 1}_{j}")(x, train)
        return x


class CifarResNet(HeadedModel):
    """The reference's CIFAR ResNet-18/34 with its Linear head or the spatial spinal head.

    Attributes (with :class:`~spinal_jax.models.heads.HeadedModel`'s):
      stage_sizes: blocks per stage, (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-34.
      stem_dropout: the stem's Dropout2d rate (0.02 in the reference).
    ``head='default'``: MaxPool(4, stride 1) -> 256 -> Linear(256->C); ``'spinal'``: MaxPool(2, 2) ->
    256x2x2 -> SpinalFC reading one spatial position per sub-layer, (0,0), (0,1), (1,0), (1,1), no
    dropout or BN; w = 256 for C <= 10, 512 otherwise, unless ``head_cfg.spinal.width`` is set.
    Init: convs He normal fan_out, BN 1/0, Linear kernels PyTorch's default with zero biases (the
    spinal head's readout bias is zero too; its sub-layer biases keep PyTorch's default). Input
    ``(B, 32, 32, 3)``; output float32 logits ``(B, C)``.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    head_cfg: HeadConfig = CIFAR_RESNET_HEAD
    stem_dropout: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        label = f"cifar_resnet{2 * sum(self.stage_sizes) + 2}"
        check_image_shape(x, 3, _EXACT_32, label, "its heads read the 256x4x4 map of 32x32 images")
        backbone = CifarResNetFeatures(self.stage_sizes, self.stem_dropout, **self.precision, name="features")
        x = backbone(x, train)
        # The spinal head reads the 256x2x2 map, the Linear head the 256 features of a 4x4 max-pool.
        x = max_pool(x, 2, 2) if self.head == "spinal" else flatten_channels_first(max_pool(x, 4, 1))
        return self.classify(x, train=train)


# ----------------------------------------------------------------------------------------------
# Registration

_C10 = dict(input_shape=INPUT_SHAPE, num_classes=10)
register_module(
    "cifar_cnn",
    CifarCNN,
    description="CIFAR CNN_dropout (6 convs, 4096 features); spinal k=4, w=128/256",
    **_C10,
)
for _depth in (11, 13, 16, 19):
    register_module(
        f"cifar_vgg{_depth}_bn",
        CifarVGG,
        description=f"VGG-{_depth}-BN for 32x32 (512 features); spinal k=4, w=512, dropout 0.5",
        cfg=VGG_CONFIGS[f"vgg{_depth}_bn"],
        **_C10,
    )
for _depth, _stages in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))):
    register_module(
        f"cifar_resnet{_depth}",
        CifarResNet,
        description=f"the reference's CIFAR ResNet-{_depth} (256x4x4); spatial spinal head, w=256/512",
        stage_sizes=_stages,
        **_C10,
    )
