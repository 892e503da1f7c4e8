"""Building blocks shared by the small-input families (MNIST CNN, VGG-5, CIFAR CNN / VGG / ResNet).

Every family model is ``features`` (a backbone submodule) followed by ``head`` (the classifier
submodule, :mod:`spinal_jax.models.heads`), so that the head's parameters are exactly ``params['head']``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import linen as nn

from spinal_jax.layers import BlockModule, Conv, Initializer, max_pool, torch_kernel_init

M = "M"  # a 2x2 max-pool in a VGG cfg


def check_image_shape(
    x: jax.Array, channels: int, sizes: tuple[int, int], model: str, reason: str = ""
) -> None:
    """Raise one ValueError unless ``x`` is ``(B, H, W, channels)`` with ``sizes[0] <= H, W <= sizes[1]``.

    Args:
      x: the model input.
      channels: required channel count.
      sizes: inclusive (min, max) of H and W; equal bounds mean exactly that size.
      model: the registry name, quoted in the message.
      reason: why those sizes, appended to the message.
    """
    lo, hi = sizes
    if x.ndim == 4 and x.shape[-1] == channels and all(lo <= s <= hi for s in x.shape[1:3]):
        return
    expected = (
        f"(batch, {lo}, {lo}, {channels})"
        if lo == hi
        else f"(batch, H, W, {channels}) with {lo} <= H, W <= {hi}"
    )
    why = f" ({reason})" if reason else ""
    raise ValueError(
        f"{model} expects NHWC float images of shape {expected}{why}, got shape {tuple(x.shape)}."
    )


class ConvBN(BlockModule):
    """Conv (PyTorch padding) -> optional BatchNorm -> optional ReLU, children ``conv`` and ``bn``.

    Attributes:
      features: output channels.
      kernel_size, strides, padding: as PyTorch's ``Conv2d``.
      use_bias: conv bias (PyTorch default init).
      use_bn: BatchNorm (PyTorch momentum/epsilon, scale 1, bias 0) after the conv.
      relu: ReLU at the end.
      kernel_init: conv kernel initialiser (default: PyTorch's).
      dtype, param_dtype, bn_axis_name: :class:`~spinal_jax.layers.BlockModule`'s.
    Input ``(B, H, W, C_in)``, output ``(B, H', W', features)``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int = 1
    use_bias: bool = True
    use_bn: bool = True
    relu: bool = True
    kernel_init: Initializer = torch_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv(
            self.features,
            self.kernel_size,
            self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            **self.dtypes,
            name="conv",
        )(x)
        if self.use_bn:
            x = self.norm(train, "bn")(x)
        return nn.relu(x) if self.relu else x


class VGGFeatures(BlockModule):
    """A VGG feature stack: conv3x3 (pad 1, with bias) -> BN -> ReLU per cfg entry, ``'M'`` = MaxPool 2x2.

    Fields ``cfg``, ``kernel_init`` (the convs' kernel initialiser) and
    :class:`~spinal_jax.layers.BlockModule`'s. Children ``block_{i}`` (the i-th conv, counting convs
    only). Input ``(B, H, W, C)``, output ``(B, H // 2**m, W // 2**m, last channels)`` with m the
    number of ``'M'`` entries.
    """

    cfg: Sequence[int | str]
    kernel_init: Initializer = torch_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        index = 0
        for v in self.cfg:
            if v == M:
                x = max_pool(x, 2)
                continue
            block = ConvBN(int(v), kernel_init=self.kernel_init, **self.precision, name=f"block_{index}")
            x = block(x, train)
            index += 1
        return x
