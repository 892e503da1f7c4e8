"""torchvision's ImageNet ResNets (v1.5) in Flax, parameter for parameter.

Every torchvision tensor has exactly one Flax leaf of the same size (conv kernels HWIO, Linear kernels
``(in, out)``); :mod:`spinal_jax.pretrained` converts the weights. Module names mirror torchvision's:
``conv1``, ``bn1``, ``layer{i}_{j}`` (block j of stage i) with ``conv1..3``, ``bn1..3``,
``downsample_conv`` / ``downsample_bn``, and the head ``fc``. With ``head='spinal'`` a
:class:`~spinal_jax.layers.SpinalFC` named ``fc`` reads the halves of the pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from spinal_jax.layers import BlockModule, Conv, max_pool
from spinal_jax.models.common import IMAGENET_ENTRY, RESNET_CONV, check_images, residual_stages
from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig, HeadedModel, SpinalHeadConfig
from spinal_jax.models.registry import register_module

# Name in the registry -> (block, blocks per stage, groups, width_per_group), as torchvision builds them.
RESNET_CONFIGS: dict[str, tuple[str, tuple[int, ...], int, int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
# Default: torchvision's Linear(features, C). Spinal: the PyTorch anchor's head on the pooled features'
# halves, w=1024, k=4, no dropout or BN, ReLU.
RESNET_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(width=1024, num_layers=4, num_splits=2), default=DefaultHeadConfig()
)


class ResidualBlock(BlockModule):
    """torchvision's ``BasicBlock`` or ``Bottleneck`` (stride on the 3x3 conv, ResNet v1.5).

    Attributes:
      kind: 'basic' or 'bottleneck'.
      planes: torchvision's ``planes``; the block outputs ``planes * expansion`` channels.
      strides: stride of the 3x3 conv (and of the downsample conv).
      groups, width_per_group: ResNeXt / wide-ResNet bottleneck width,
        ``int(planes * width_per_group / 64) * groups``.
      dtype, param_dtype, bn_axis_name: :class:`~spinal_jax.layers.BlockModule`'s.
    Input ``(B, H, W, C_in)``, output ``(B, H / strides, W / strides, planes * expansion)``.
    """

    kind: str
    planes: int
    strides: int = 1
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(features: int, size: int, strides: int = 1, groups: int = 1, name: str = "") -> Conv:
            kwargs = {**RESNET_CONV, **self.dtypes}
            return Conv(features, size, strides, padding=size // 2, groups=groups, **kwargs, name=name)

        def bn(name: str) -> nn.BatchNorm:
            return self.norm(train, name)

        out_ch = self.planes * EXPANSION[self.kind]
        if self.kind == "basic":
            y = nn.relu(bn("bn1")(conv(self.planes, 3, self.strides, name="conv1")(x)))
            y = bn("bn2")(conv(self.planes, 3, name="conv2")(y))
        else:
            width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
            y = nn.relu(bn("bn1")(conv(width, 1, name="conv1")(x)))
            y = nn.relu(bn("bn2")(conv(width, 3, self.strides, self.groups, name="conv2")(y)))
            y = bn("bn3")(conv(out_ch, 1, name="conv3")(y))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_ch:
            shortcut = bn("downsample_bn")(conv(out_ch, 1, self.strides, name="downsample_conv")(x))
        return nn.relu(y + shortcut)


class ResNet(HeadedModel):
    """torchvision's ResNet / Wide-ResNet / ResNeXt, with its ``fc`` or a spinal head named ``fc``.

    Attributes (with :class:`~spinal_jax.models.heads.HeadedModel`'s; here C = 1000 and
    ``head='default'`` by default):
      block: 'basic' (ResNet-18/34) or 'bottleneck'.
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3).
      groups, width_per_group: ResNeXt / wide variants (torchvision's arguments).
    ``head='default'``: Linear(features, C), PyTorch init; ``'spinal'``: SpinalFC on the pooled
    features' halves.
    Input NHWC float images ``(B, H, W, 3)`` with H, W >= 32 (224 for ImageNet); output float32 logits
    ``(B, C)``.
    """

    head_path: ClassVar[str] = "fc"  # torchvision's name of the classifier
    block: str = "bottleneck"
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    head: str = "default"
    groups: int = 1
    width_per_group: int = 64
    head_cfg: HeadConfig = RESNET_HEAD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, 3, 32, "ResNet")
        if self.block not in EXPANSION:
            raise ValueError(f"ResNet: unknown block {self.block!r}, use 'basic' or 'bottleneck'.")
        x = Conv(64, 7, 2, padding=3, **RESNET_CONV, **self.dtypes, name="conv1")(x)
        x = max_pool(nn.relu(self.norm(train, "bn1")(x)), 3, 2, padding=1)
        widths = {"groups": self.groups, "width_per_group": self.width_per_group}
        for i, j, strides in residual_stages(self.stage_sizes):
            block = ResidualBlock(
                self.block, 64 * 2**i, strides, **widths, **self.precision, name=f"layer{i + 1}_{j}"
            )
            x = block(x, train)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten: (B, C)
        return self.classify(x, train=train)


for _name, (_block, _stages, _groups, _width) in RESNET_CONFIGS.items():
    register_module(
        _name,
        ResNet,
        **IMAGENET_ENTRY,
        description=f"torchvision {_name} (ImageNet), fc or spinal head",
        block=_block,
        stage_sizes=_stages,
        groups=_groups,
        width_per_group=_width,
    )
