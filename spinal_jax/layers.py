"""The spinal fully-connected head and the PyTorch-compatible building blocks it is made of.

Conventions used across spinal_jax:
  * images are NHWC; a head that reads a flattened conv map flattens it channel-first
    (:func:`flatten_channels_first`) so that its "halves" are PyTorch's;
  * ``Dense`` / ``Conv`` hold a ``kernel`` (Flax layout: ``(in, out)`` / ``(kh, kw, in, out)``) and a
    ``bias``, initialised by default as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both;
  * BatchNorm uses PyTorch's defaults: momentum 0.1 (Flax ``momentum=0.9``) and epsilon 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Initializer = Callable[..., Array]
Dtype = Any

BN_MOMENTUM = 0.9  # = PyTorch momentum 0.1
BN_EPSILON = 1e-5

# PyTorch's default Linear/Conv weight init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# Init of the VGG-5 and ResNet convolutions: kaiming normal (ReLU gain), fan_out, not truncated.
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _activation(name: str | Callable[[Array], Array] | None) -> Callable[[Array], Array]:
    if callable(name):
        return name
    table = {
        "relu": nn.relu,
        "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),  # PyTorch default slope
        "identity": lambda x: x,
        "linear": lambda x: x,
        None: lambda x: x,
    }
    if name not in table:
        raise ValueError(
            f"Unknown activation {name!r}: use one of 'relu', 'leaky_relu', 'identity' or a callable."
        )
    return table[name]


def flatten_channels_first(x: Array) -> Array:
    """(B, H, W, C) -> (B, C*H*W) in PyTorch's NCHW flatten order; (B, D) passes through."""
    if x.ndim == 4:
        x = jnp.transpose(x, (0, 3, 1, 2))
    return x.reshape(x.shape[0], -1)


def batch_norm(train: bool, axis_name: str | None = None, **kwargs: Any) -> nn.BatchNorm:
    """A BatchNorm with PyTorch's momentum and epsilon, synchronised over ``axis_name`` if given."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name if train else None,
        **kwargs,
    )


class Dropout(nn.Module):
    """``flax.linen.Dropout`` whose mask does not depend on how the batch is split over devices.

    Without ``axis_name`` (or deterministic) it is ``nn.Dropout``: the same key, the same
    ``bernoulli(rng, 1 - rate, shape)`` call and the same ``select(mask, x / keep, 0)``. With
    ``axis_name`` (the pmap axis of the train step, whose devices share the dropout key) it draws the
    mask of the global batch ``(n_devices * b, ...)`` and keeps this device's rows ``[i * b, (i + 1) * b)``,
    so every example gets the mask it would get in one step over the whole batch on one device.

    Attributes:
      rate: the dropout probability (not the keep rate).
      broadcast_dims: dimensions that share one mask (``(1, 2)`` on NHWC is PyTorch's Dropout2d).
      deterministic: if true the input passes unchanged; merged with the call's argument.
      rng_collection: the rng collection the key comes from.
      axis_name: the pmap axis whose devices each hold one slice of the batch (dimension 0), or None.
    No parameters; input and output of any shape ``(b, ...)``.
    """

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool | None = None, rng: Array | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        if self.axis_name is None or any(d % inputs.ndim == 0 for d in self.broadcast_dims):
            mask = jax.random.bernoulli(rng, p=keep_prob, shape=shape)
        else:
            b = shape[0]
            devices = jax.lax.psum(1, self.axis_name)
            mask = jax.random.bernoulli(rng, p=keep_prob, shape=(devices * b, *shape[1:]))
            mask = jax.lax.dynamic_slice_in_dim(mask, jax.lax.axis_index(self.axis_name) * b, b, axis=0)
        mask = jnp.broadcast_to(mask, inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


class DtypeModule(nn.Module):
    """Base of the modules with a compute and a parameter dtype (keyword-only fields).

    Attributes:
      dtype: compute dtype (None = float32 here: the promoted dtype of input and parameters).
      param_dtype: parameter dtype.
    """

    _: dataclasses.KW_ONLY
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def dtypes(self) -> dict[str, Any]:
        """``dtype`` and ``param_dtype`` as the keyword arguments of a child module."""
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


class BlockModule(DtypeModule):
    """Base of the building blocks and models: the dtypes and the pmap axis (keyword-only fields).

    Attributes (with :class:`DtypeModule`'s):
      bn_axis_name: pmap axis over which BatchNorm statistics are averaged in training (and dropout
        masks drawn for the global batch, see :class:`Dropout`).
    """

    _: dataclasses.KW_ONLY
    bn_axis_name: str | None = None

    @property
    def precision(self) -> dict[str, Any]:
        """``dtype``, ``param_dtype`` and ``bn_axis_name`` as the keyword arguments of a child block."""
        return {**self.dtypes, "bn_axis_name": self.bn_axis_name}

    def norm(self, train: bool, name: str) -> nn.BatchNorm:
        """A child :func:`batch_norm` named ``name`` in this module's dtypes, over ``bn_axis_name``;
        it maps ``(..., C)`` to ``(..., C)``."""
        return batch_norm(train, self.bn_axis_name, **self.dtypes, name=name)


class _TorchLayer(DtypeModule):
    """What :class:`Dense` and :class:`Conv` share: a ``kernel`` and an optional ``bias`` of
    ``features`` entries, initialised as PyTorch does.

    Attributes (with :class:`DtypeModule`'s):
      features: output width (channels).
      use_bias: add a bias.
      kernel_init: kernel initialiser (default: PyTorch's).
      bias_init: bias initialiser, or None for PyTorch's U(+-1/sqrt(fan_in)).
    """

    features: int
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    kernel_init: Initializer = torch_kernel_init
    bias_init: Initializer | None = None

    def _weights(self, x: Array, kernel_shape: tuple[int, ...]) -> tuple[Array, Array, Array | None]:
        """``x``, the kernel of ``kernel_shape`` (``(..., fan_in_per_position, features)``; fan_in is the
        product of all but the last entry) and the bias ``(features,)`` or None, promoted to ``dtype``."""
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            binit = self.bias_init or torch_bias_init(int(np.prod(kernel_shape[:-1])))
            bias = self.param("bias", binit, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return x, kernel, bias


class Dense(_TorchLayer):
    """A Linear layer with PyTorch's default init (the bias bound depends on fan_in).

    Attributes: :class:`_TorchLayer`'s (``features``, ``use_bias``, ``kernel_init``, ``bias_init``) and
    :class:`DtypeModule`'s. Input ``(..., fan_in)``, output ``(..., features)`` in ``dtype``.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x, kernel, bias = self._weights(x, (x.shape[-1], self.features))
        y = jnp.dot(x, kernel)
        return y + bias if bias is not None else y


class Conv(_TorchLayer):
    """A 2-D convolution on NHWC input with PyTorch's default init and explicit padding.

    Attributes (with :class:`_TorchLayer`'s and :class:`DtypeModule`'s):
      kernel_size: (kh, kw) or an int.
      strides: an int or a pair.
      padding: pixels of zero padding on each side (PyTorch's ``padding=``), or a Flax padding string.
      groups: feature groups (ResNeXt).
    Input ``(B, H, W, C_in)``, output ``(B, H', W', features)`` in ``dtype``.
    """

    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: int | str = 0
    groups: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        in_ch = x.shape[-1]
        if in_ch % self.groups:
            raise ValueError(f"Conv: {in_ch} input channels do not divide into {self.groups} groups.")
        x, kernel, bias = self._weights(x, (*ks, in_ch // self.groups, self.features))
        pad = self.padding if isinstance(self.padding, str) else [(self.padding, self.padding)] * 2
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=strides,
            padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
        return y + bias if bias is not None else y


def max_pool(x: Array, size: int, stride: int | None = None, padding: int = 0) -> Array:
    """PyTorch ``MaxPool2d(size, stride, padding)`` on NHWC (floor mode)."""
    stride = size if stride is None else stride
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (size, size), strides=(stride, stride), padding=pad)


def _chunk_indices(in_features: int, num_splits: int, num_layers: int) -> np.ndarray:
    """Feature indices read by each sub-layer, shape ``(num_layers, split_size)``.

    The reference's customisable rule: split size s = round(D / n); the input is tiled (concatenated
    with itself) until it is at least k*s long and sub-layer i reads tiled chunk i. When n divides D
    this is plain contiguous chunk i mod n (halves: A, B, A, B, ...).
    """
    if num_splits < 1:
        raise ValueError(f"SpinalFC: num_splits must be >= 1, got {num_splits}.")
    if num_splits > in_features:
        raise ValueError(
            f"SpinalFC: {num_splits} splits but the input has only {in_features} features; "
            "use num_splits <= the flattened input size."
        )
    size = int(round(in_features / num_splits))
    return (np.arange(num_layers)[:, None] * size + np.arange(size)[None, :]) % in_features


class SpinalFC(BlockModule):
    """SpinalNet's fully-connected head (Kabir et al.), every variant of the reference in one module.

    With chunks x_c(i) of the input and z_0 = nothing::

        z_i = act(BN_i(Dense_i(Drop_i(concat[x_c(i), z_{i-1}]))))     i = 1..k
        y   = Dense_out(Drop_out(concat[z_1, ..., z_k]))

    Parameters are stored per sub-layer, split into the part that reads the input chunk and the part
    that reads the previous output (a reference Linear ``W_i`` of shape ``(w, s+w)`` is
    ``concat[input_kernel[i], hidden_kernel[i-1]].T``):
      * ``input_kernel``  ``(L, s, w)``, ``hidden_kernel`` ``(L-1, w, w)``, ``bias`` ``(L, w)``, where L = k,
        or L = 2 with ``share_weights`` (sub-layer 1, then one Dense shared by sub-layers 2..k);
      * ``bn_{i}`` BatchNorm per sub-layer (``use_bn``); ``readout`` Dense(k*w -> num_classes).

    Attributes:
      width: w, the width of each sub-layer.
      num_classes: C, or None to return the concatenated ``(B, k*w)`` features without the readout.
      num_layers: k, the number of sub-layers.
      num_splits: n, the number of contiguous input chunks (2 = the reference's halves).
      spatial: if True the input is a ``(B, H, W, C)`` map and sub-layer i reads the C-vector at spatial
        position i mod (H*W), row-major (the reference's SpinalResNet head).
      activation: 'relu', 'leaky_relu', 'identity' (the purely linear variant) or a callable.
      dropout_rate: dropout before every Dense, the readout included (independent masks).
      use_bn: BatchNorm1d after each sub-layer's Dense.
      share_weights: sub-layers 2..k share one Dense (SpinalNet-SW).
      fused: compute all input-chunk projections in one batched matmul and keep only the small
        w x w recurrence sequential; False runs the literal layer-by-layer form. Same parameters,
        same numbers (up to float rounding).
      kernel_init: kernel initialiser of every Dense (default: PyTorch's).
      readout_bias_init: the readout's bias initialiser (None: PyTorch's).
      dtype, param_dtype, bn_axis_name: :class:`BlockModule`'s.

    Input ``(B, D)`` (or ``(B, H, W, C)`` when ``spatial``); output ``(B, num_classes)`` logits.
    """

    width: int
    num_classes: int | None
    num_layers: int = 4
    num_splits: int = 2
    spatial: bool = False
    activation: str | Callable[[Array], Array] | None = "relu"
    dropout_rate: float = 0.0
    use_bn: bool = False
    share_weights: bool = False
    fused: bool = True
    kernel_init: Initializer = torch_kernel_init
    readout_bias_init: Initializer | None = None

    def _check(self) -> None:
        if self.width <= 0:
            raise ValueError(f"SpinalFC: width must be a positive integer, got {self.width}.")
        if self.num_layers < 1:
            raise ValueError(f"SpinalFC: num_layers must be >= 1, got {self.num_layers}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"SpinalFC: num_classes must be >= 1 (or None), got {self.num_classes}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"SpinalFC: dropout_rate must be in [0, 1), got {self.dropout_rate}.")

    def _chunks(self, x: Array) -> Array:
        """The input chunk of every sub-layer, ``(B, k, s)``."""
        k = self.num_layers
        if self.spatial:
            if x.ndim != 4:
                raise ValueError(f"SpinalFC(spatial=True) expects a (B, H, W, C) map, got shape {x.shape}.")
            b, h, w, c = x.shape
            positions = x.reshape(b, h * w, c)
            return positions[:, np.arange(k) % (h * w)]
        if x.ndim != 2:
            raise ValueError(
                f"SpinalFC expects (B, D) features, got shape {x.shape}; flatten first "
                "(spinal_jax.layers.flatten_channels_first gives PyTorch's order)."
            )
        d = x.shape[1]
        idx = _chunk_indices(d, self.num_splits, k)
        size = idx.shape[1]
        if d % self.num_splits == 0 and size * self.num_splits == d:
            # Contiguous chunks without a gather: view as (B, n, s) and pick chunk i mod n.
            return x.reshape(x.shape[0], self.num_splits, size)[:, np.arange(k) % self.num_splits]
        return x[:, idx]

    def _param_index(self, i: int) -> int:
        return min(i, 1) if self.share_weights else i

    def _parameters(self, s: int) -> tuple[Array, Array | None, Array]:
        """``input_kernel (L, s, w)``, ``hidden_kernel (L-1, w, w)`` (None when k = 1), ``bias (L, w)``,
        each initialised as the reference's ``nn.Linear(s, w)`` / ``nn.Linear(s + w, w)``."""
        k, w = self.num_layers, self.width
        stored = min(k, 2) if self.share_weights else k

        def input_init(key: Array, shape: Sequence[int], dtype: Dtype) -> Array:
            # Sub-layer 1 has fan_in s, the others s + w, as nn.Linear(s, w) / nn.Linear(s + w, w).
            keys = jax.random.split(key, shape[0])
            return jnp.stack([self._kernel_part(keys[j], j, s, dtype)[:s] for j in range(shape[0])])

        def hidden_init(key: Array, shape: Sequence[int], dtype: Dtype) -> Array:
            keys = jax.random.split(key, shape[0])
            return jnp.stack([self._kernel_part(keys[j], j + 1, s, dtype)[s:] for j in range(shape[0])])

        def bias_init(key: Array, shape: Sequence[int], dtype: Dtype) -> Array:
            keys = jax.random.split(key, shape[0])
            fans = [s if j == 0 else s + w for j in range(shape[0])]
            return jnp.stack([torch_bias_init(f)(kk, (w,), dtype) for kk, f in zip(keys, fans, strict=True)])

        input_kernel = self.param("input_kernel", input_init, (stored, s, w), self.param_dtype)
        hidden_kernel = (
            self.param("hidden_kernel", hidden_init, (stored - 1, w, w), self.param_dtype) if k > 1 else None
        )
        bias = self.param("bias", bias_init, (stored, w), self.param_dtype)
        return input_kernel, hidden_kernel, bias

    def _finish(self, pre: Array, i: int, train: bool) -> Array:
        """Sub-layer i's BatchNorm (``use_bn``) and activation on its ``(B, w)`` pre-activation."""
        if self.use_bn:
            pre = self.norm(train, f"bn_{i}")(pre)
        return _activation(self.activation)(pre)

    def _fused(
        self, chunks: Array, weights: tuple[Array, Array | None, Array], drops: list[Dropout], train: bool
    ) -> list[Array]:
        """The k sub-layer outputs ``(B, w)``: one batched matmul for every input-chunk projection, then
        the sequential w x w recurrence. ``chunks`` is ``(B, k, s)``."""
        input_kernel, hidden_kernel, bias = weights
        deterministic = not train or self.dropout_rate == 0.0
        if not deterministic:
            chunks = jnp.stack(
                [drops[i](chunks[:, i], deterministic=False) for i in range(self.num_layers)], axis=1
            )
        layer_of = np.array([self._param_index(i) for i in range(self.num_layers)])
        # (B, k, s) x (k, s, w) -> (B, k, w).
        projected = jnp.einsum("bks,ksw->bkw", chunks, input_kernel[layer_of]) + bias[layer_of]
        outputs: list[Array] = []
        for i in range(self.num_layers):
            pre = projected[:, i]
            if outputs:
                z_in = drops[i](outputs[-1], deterministic=deterministic)
                pre = pre + z_in @ hidden_kernel[self._param_index(i) - 1]
            outputs.append(self._finish(pre, i, train))
        return outputs

    def _literal(
        self, chunks: Array, weights: tuple[Array, Array | None, Array], drops: list[Dropout], train: bool
    ) -> list[Array]:
        """The k sub-layer outputs computed layer by layer, as the reference: Linear i on
        ``concat[chunk_i, z_{i-1}]``."""
        input_kernel, hidden_kernel, bias = weights
        deterministic = not train or self.dropout_rate == 0.0
        outputs: list[Array] = []
        for i in range(self.num_layers):
            p = self._param_index(i)
            if outputs:
                inp = jnp.concatenate([chunks[:, i], outputs[-1]], axis=-1)
                kernel = jnp.concatenate([input_kernel[p], hidden_kernel[p - 1]], axis=0)
            else:
                inp, kernel = chunks[:, i], input_kernel[p]
            inp = drops[i](inp, deterministic=deterministic)
            outputs.append(self._finish(inp @ kernel + bias[p], i, train))
        return outputs

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``(B, D)`` features (``(B, H, W, C)`` when ``spatial``) -> ``(B, num_classes)`` logits, or the
        ``(B, k*w)`` concatenated sub-layer outputs when ``num_classes`` is None."""
        self._check()
        chunks = self._chunks(x)  # (B, k, s)
        weights = self._parameters(chunks.shape[-1])
        chunks, *weights = nn.dtypes.promote_dtype(chunks, *weights, dtype=self.dtype)
        drops = [
            Dropout(self.dropout_rate, axis_name=self.bn_axis_name, name=f"dropout_{i}")
            for i in range(self.num_layers)
        ]
        layers = self._fused if self.fused else self._literal
        features = jnp.concatenate(layers(chunks, tuple(weights), drops, train), axis=-1)
        if self.num_classes is None:
            return features
        deterministic = not train or self.dropout_rate == 0.0
        drop = Dropout(self.dropout_rate, axis_name=self.bn_axis_name, name="dropout_out")
        features = drop(features, deterministic=deterministic)
        init = {"kernel_init": self.kernel_init, "bias_init": self.readout_bias_init}
        return Dense(self.num_classes, **init, **self.dtypes, name="readout")(features)

    def _kernel_part(self, key: Array, layer: int, s: int, dtype: Dtype) -> Array:
        """An ``(s + w, w)`` kernel (or ``(s, w)`` for sub-layer 1) initialised with its true fan_in."""
        fan_in = s if layer == 0 else s + self.width
        return self.kernel_init(key, (fan_in, self.width), dtype)


def spinal_head_param_count(
    in_features: int,
    width: int,
    num_classes: int,
    num_layers: int = 4,
    num_splits: int = 2,
    use_bn: bool = False,
) -> int:
    """Trainable parameters of a :class:`SpinalFC` with a readout (BN affine counted, statistics not).

    With split size s = round(in_features / num_splits): ``k*s*w`` (input kernels) + ``(k-1)*w*w``
    (hidden kernels) + ``k*w`` (biases) + ``k*w*C + C`` (readout), plus ``2*k*w`` with BatchNorm.
    """
    s = int(round(in_features / num_splits))
    k, w, c = num_layers, width, num_classes
    count = k * s * w + (k - 1) * w * w + k * w + k * w * c + c
    return count + (2 * k * w if use_bn else 0)
