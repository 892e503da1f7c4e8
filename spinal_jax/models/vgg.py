"""torchvision's ImageNet VGG-BN models in Flax, parameter for parameter.

Module names mirror torchvision's ``state_dict``: ``features_{i}`` is ``features[i]`` (a Conv or a
BatchNorm, at torchvision's index), and ``classifier`` is the head: ``classifier/fc_0``, ``fc_3``,
``fc_6`` (torchvision's ``classifier[0]``, ``[3]``, ``[6]``), or, with ``head='spinal'``, a
:class:`~spinal_jax.layers.SpinalFC` named ``classifier`` (never ``fc``: VGG has no ``fc``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from spinal_jax.layers import Conv, flatten_channels_first, kaiming_normal_fan_out, max_pool
from spinal_jax.models.common import IMAGENET_ENTRY, check_images
from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig, HeadedModel, SpinalHeadConfig
from spinal_jax.models.registry import register_module

M = "M"  # a 2x2 max-pool in a cfg

VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11_bn": (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg13_bn": (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg16_bn": (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    "vgg19_bn": (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M),
}

# Default: torchvision's classifier (fc_0, fc_3, fc_6). Spinal: the reference's transfer-learning
# "SpinalNet" head, w=1024, k=4, halves, dropout 0.5, BN.
VGG_HEAD = HeadConfig(
    spinal=SpinalHeadConfig(width=1024, num_layers=4, num_splits=2, dropout=0.5, bn=True),
    default=DefaultHeadConfig(
        hidden=(4096, 4096), dropout=0.5, dropout_at=(False, True, True), layout="torchvision_vgg"
    ),
)


def _adaptive_bins(size: int, out: int) -> np.ndarray:
    """``(out, size)`` averaging matrix of PyTorch's adaptive pooling: bin i is
    ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    mat = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d(output_size)`` on NHWC: ``(B, H, W, C) -> (B, oh, ow, C)``."""
    b, h, w, c = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    ph = jnp.asarray(_adaptive_bins(h, oh), x.dtype)
    pw = jnp.asarray(_adaptive_bins(w, ow), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", ph, x, pw)


class VGG(HeadedModel):
    """torchvision's VGG-BN: ``features`` (conv3x3 + BN + ReLU per cfg entry, 'M' = max-pool 2x2),
    AdaptiveAvgPool2d((7, 7)), channel-first flatten (25,088 features), then ``classifier``.

    Attributes (with :class:`~spinal_jax.models.heads.HeadedModel`'s; here C = 1000 and
    ``head='default'`` by default):
      cfg: channel counts and 'M' pools, e.g. ``VGG_CONFIGS['vgg16_bn']``.
    ``head='default'``: torchvision's classifier; ``'spinal'``: SpinalFC named ``classifier``.
    Input NHWC float images ``(B, H, W, 3)`` with H, W >= 32; output float32 logits ``(B, C)``.
    """

    head_path: ClassVar[str] = "classifier"  # torchvision's name of the classifier (VGG has no ``fc``)
    cfg: Sequence[int | str] = VGG_CONFIGS["vgg16_bn"]
    num_classes: int = 1000
    head: str = "default"
    head_cfg: HeadConfig = VGG_HEAD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x, 3, 32, "VGG")
        init = {"kernel_init": kaiming_normal_fan_out, "bias_init": nn.initializers.zeros}
        index = 0  # torchvision's index in ``features``
        for v in self.cfg:
            if v == M:
                x = max_pool(x, 2, 2)
                index += 1
                continue
            x = Conv(int(v), 3, padding=1, **init, **self.dtypes, name=f"features_{index}")(x)
            x = nn.relu(self.norm(train, f"features_{index + 1}")(x))
            index += 3
        x = flatten_channels_first(adaptive_avg_pool(x, (7, 7)))  # (B, 512 * 7 * 7)
        return self.classify(x, train=train)


for _name, _cfg in VGG_CONFIGS.items():
    register_module(
        _name,
        VGG,
        **IMAGENET_ENTRY,
        description=f"torchvision {_name} (ImageNet), classifier or spinal head",
        cfg=_cfg,
    )
