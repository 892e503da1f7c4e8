"""The small-input families (MNIST CNN, Arch2, VGG-5, CIFAR CNN / VGG-BN / ResNet).

Parameter counts against the paper's published counts (docs/SPINALNET.md, "The head") and against
layer-by-layer formulas written here; NumPy
re-implementations of the MNIST models, VGG-5, the CIFAR CNN and the SpinalResNet head (flatten order,
stack order, spatial order) on real MNIST / CIFAR-10 images; the channel-first flatten; initialisers;
bad input. Every model's forward, gradient, bf16 and train mode on real images: test_all_models.py.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers.fast_compile import jit_fast
from family_helpers.real_images import real_batch
from family_helpers.seeded_variables import seeded_variables
from flax import linen as nn
from numpy.lib.stride_tricks import sliding_window_view

from spinal_jax.models import create_model
from spinal_jax.models.cifar import CifarBasicBlock

REPO = Path(__file__).resolve().parents[1]
VGG_CFGS = {  # convs per stage of cfgs A, B, D, E; channels 64, 128, 256, 512, 512
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
SMALL_MODELS = (
    "mnist_cnn",
    "mnist_arch2",
    "vgg5",
    "cifar_cnn",
    *(f"cifar_vgg{d}_bn" for d in VGG_CFGS),
    "cifar_resnet18",
    "cifar_resnet34",
)


# ------------------------------------------------------------------------------------------------
# Independent parameter formulas


def spinal_head(d: int, k: int, w: int, c: int | None, bn: bool = False, splits: int = 2) -> int:
    """A spinal head's parameters: k*s*w + (k-1)*w^2 + k*w (+ readout k*w*C + C) (+ BN 2kw)."""
    s = d // splits
    count = k * s * w + (k - 1) * w * w + k * w
    count += 0 if c is None else k * w * c + c
    return count + (2 * k * w if bn else 0)


def conv_bn(cin: int, cout: int, bias: bool = True, bn: bool = True, k: int = 3) -> int:
    return k * k * cin * cout + (cout if bias else 0) + (2 * cout if bn else 0)


def vgg_backbone(depth: int) -> int:
    total, cin = 0, 3
    for convs, width in zip(VGG_CFGS[depth], (64, 128, 256, 512, 512), strict=True):
        for _ in range(convs):
            total, cin = total + conv_bn(cin, width), width
    return total


def resnet_backbone(stages: tuple[int, ...]) -> int:
    total, cin = conv_bn(3, 32, bias=False), 32
    for i, (blocks, width) in enumerate(zip(stages, (32, 64, 128, 256), strict=True)):
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            total += conv_bn(cin, width, bias=False) + conv_bn(width, width, bias=False)
            if stride != 1 or cin != width:
                total += conv_bn(cin, width, bias=False)  # the 3x3 downsample + BN
            cin = width
    return total


def mlp(*widths: int) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


# (model, classes, head): (backbone, head) parameters. Numbers written as literals are the published
# counts (docs/SPINALNET.md, "The head" and the family sections); the others come from the formulas above.
EXPECTED = {
    ("mnist_cnn", 10, "default"): (5_280, 16_560),
    ("mnist_cnn", 10, "spinal"): (5_280, 8_538),
    ("mnist_arch2", 10, "spinal"): (5_280, 389_840),
    ("mnist_arch2", 10, "default"): (5_280, 16_560),
    ("vgg5", 10, "default"): (3_508_416, 137_738),
    ("vgg5", 10, "spinal"): (3_508_416, 121_354),
    ("vgg5", 62, "default"): (3_508_416, 164_414),
    ("vgg5", 62, "spinal"): (3_508_416, 148_030),
    ("vgg5", 47, "spinal"): (3_508_416, spinal_head(256, 4, 128, 47, bn=True)),
    ("vgg5", 47, "default"): (3_508_416, 256 * 512 + 512 + 2 * 512 + mlp(512, 47)),
    ("cifar_cnn", 10, "default"): (1_126_912, 4_725_258),
    ("cifar_cnn", 10, "spinal"): (1_126_912, 1_103_370),
    ("cifar_cnn", 100, "default"): (1_126_912, 4_771_428),
    ("cifar_cnn", 100, "spinal"): (1_126_912, 2_397_284),
    ("cifar_vgg19_bn", 10, "default"): (20_035_392, 18_923_530),
    ("cifar_vgg19_bn", 10, "spinal"): (20_035_392, 1_333_258),
    ("cifar_vgg19_bn", 100, "default"): (20_035_392, 19_292_260),
    ("cifar_vgg19_bn", 100, "spinal"): (20_035_392, 1_517_668),
    **{
        (f"cifar_vgg{d}_bn", c, head): (vgg_backbone(d), count)
        for d in (11, 13, 16)
        for c, head, count in (
            (10, "default", 18_923_530),
            (10, "spinal", 1_333_258),
            (100, "default", 19_292_260),
            (100, "spinal", 1_517_668),
        )
    },
    **{
        (f"cifar_resnet{depth}", c, head): (resnet_backbone(stages), count)
        for depth, stages in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)))
        for c, head, count in (
            (10, "default", 2_570),
            (100, "default", 25_700),
            (10, "spinal", 470_026),
            (100, "spinal", 1_517_668),
        )
    },
}
TOTALS = {  # published totals, baseline -> spinal
    ("mnist_cnn", 10, "default"): 21_840,
    ("mnist_cnn", 10, "spinal"): 13_818,
    ("mnist_arch2", 10, "spinal"): 395_120,
    ("vgg5", 10, "default"): 3_646_154,
    ("vgg5", 10, "spinal"): 3_629_770,
    ("cifar_cnn", 10, "default"): 5_852_170,
    ("cifar_cnn", 10, "spinal"): 2_230_282,
    ("cifar_cnn", 100, "default"): 5_898_340,
    ("cifar_cnn", 100, "spinal"): 3_524_196,
}


def _input_shape(name: str) -> tuple[int, int, int]:
    return (28, 28, 1) if name.startswith(("mnist", "vgg5")) else (32, 32, 3)


def _abstract_params(name: str, classes: int, head: str, **overrides) -> dict:
    model = create_model(name, num_classes=classes, head=head, **overrides)
    x = jax.ShapeDtypeStruct((1, *_input_shape(name)), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _size(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("key", list(EXPECTED), ids=["-".join(map(str, k)) for k in EXPECTED])
def test_parameter_counts_split_into_backbone_and_head(key):
    name, classes, head = key
    params = _abstract_params(name, classes, head)
    assert set(params) == {"features", "head"}
    backbone, head_count = EXPECTED[key]
    assert _size(params["features"]) == backbone
    assert _size(params["head"]) == head_count
    if key in TOTALS:
        assert _size(params) == TOTALS[key]


def test_published_counts_pin_the_formula_used_for_other_counts():
    # The formula above reproduces the published numbers, so the rows computed with it are anchored.
    assert spinal_head(320, 6, 8, 10) == 8_538
    assert spinal_head(320, 6, 10, 10) == 10_770
    assert spinal_head(256, 4, 128, 62, bn=True) == 148_030
    assert spinal_head(4096, 4, 256, 100) == 2_397_284
    assert spinal_head(512, 4, 512, 100) == 1_517_668
    assert spinal_head(1024, 4, 256, 10, splits=4) == 470_026  # spatial: 4 positions of 256 channels
    assert vgg_backbone(19) == 20_035_392


@pytest.mark.parametrize("width, head_count", [(30, 389_840), (50, 672_360), (300, 5_756_360)])
def test_arch2_head_counts_for_every_reference_width(width, head_count):
    params = _abstract_params("mnist_arch2", 10, "spinal", spinal_width=width)
    assert _size(params["head"]) == head_count
    expected = (
        spinal_head(784, 10, width, None)
        + spinal_head(1440, 8, width, None)
        + spinal_head(320, 8, width, None)
    )
    assert head_count == expected + mlp(26 * width, 50, 10)


def test_explicit_spinal_width_overrides_the_class_count_rule():
    params = _abstract_params("cifar_cnn", 100, "spinal", spinal_width=128)
    assert _size(params["head"]) == spinal_head(4096, 4, 128, 100)
    params = _abstract_params("cifar_resnet18", 10, "spinal", spinal_width=512)
    assert _size(params["head"]) == spinal_head(1024, 4, 512, 10, splits=4)


def test_spinal_heads_are_spinal_fc():
    for name in SMALL_MODELS:
        head = _abstract_params(name, 10, "spinal")["head"]
        stacks = [head[s] for s in ("raw", "conv1", "conv2")] if name == "mnist_arch2" else [head]
        for stack in stacks:
            assert {"input_kernel", "hidden_kernel", "bias"} <= set(stack), name
        default = _abstract_params(name, 10, "default")["head"]
        assert "input_kernel" not in jax.tree_util.tree_leaves_with_path(default).__repr__(), name


# ------------------------------------------------------------------------------------------------
# Seeded variables on real images


@functools.cache
def _initialised(name: str, head: str, classes: int = 10) -> tuple[nn.Module, dict, jax.Array]:
    """``(model, variables, real batch)`` with variables of exactly the init's tree, shapes and dtypes,
    filled with seeded random values. Compiling ``init`` (its many threefry draws) costs 10-20 s per model
    on the 2-core CPU; the real initialisers are checked by the ``test_*_init*`` tests below."""
    model = create_model(name, num_classes=classes, head=head)
    x = jnp.asarray(real_batch(_input_shape(name)[-1]))
    variables = jax.device_put(seeded_variables(jax.eval_shape(model.init, jax.random.key(0), x)))
    return model, variables, x


# ------------------------------------------------------------------------------------------------
# NumPy re-implementations (float64) of the MNIST models


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _conv(x: np.ndarray, p: dict, stride: int = 1, pad: int = 0) -> np.ndarray:
    """PyTorch Conv2d (cross-correlation, zero padding) on NHWC, kernel ``(kh, kw, in, out)``."""
    k = p["kernel"]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, k.shape[:2], axis=(1, 2))[
        :, ::stride, ::stride
    ]  # (B, H', W', in, kh, kw)
    y = np.einsum("bhwcij,ijco->bhwo", windows, k, optimize=True)
    return y + p["bias"] if "bias" in p else y


def _bn(x: np.ndarray, p: dict, stats: dict) -> np.ndarray:
    """Eval-mode BatchNorm with PyTorch's epsilon."""
    return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * p["scale"] + p["bias"]


def _max_pool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """PyTorch MaxPool2d (floor mode) on NHWC."""
    return sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride].max(axis=(-2, -1))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _pool_relu(x: np.ndarray) -> np.ndarray:
    return _relu(_max_pool(x, 2, 2))


def _nchw_flat(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def _spinal(chunks: list[np.ndarray], p: dict) -> np.ndarray:
    """z_i = ReLU(Linear_i([chunk_i, z_{i-1}])) with reference Linear i = concat[input_kernel[i],
    hidden_kernel[i-1]]; chunks per sub-layer."""
    z, outs = None, []
    for i, chunk in enumerate(chunks):
        inp = chunk if z is None else np.concatenate([chunk, z], axis=1)
        kernel = p["input_kernel"][i]
        if z is not None:
            kernel = np.concatenate([kernel, p["hidden_kernel"][i - 1]], axis=0)
        z = np.maximum(inp @ kernel + p["bias"][i], 0)
        outs.append(z)
    feats = np.concatenate(outs, axis=1)
    if "readout" in p:
        return feats @ p["readout"]["kernel"] + p["readout"]["bias"]
    return feats


def _halves(x: np.ndarray, k: int) -> list[np.ndarray]:
    h = x.shape[1] // 2
    return [x[:, :h] if i % 2 == 0 else x[:, h:] for i in range(k)]


def _dense(x: np.ndarray, p: dict) -> np.ndarray:
    return x @ p["kernel"] + p["bias"]


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_arch2"])
@pytest.mark.parametrize("head", ["default", "spinal"])
def test_mnist_models_equal_a_numpy_reference(name, head):
    model, variables, batch = _initialised(name, head)
    logits = model.apply(variables, batch)  # eval mode: dropout off
    p = _np(variables["params"])
    x = np.asarray(batch, np.float64)
    conv1 = _pool_relu(_conv(x, p["features"]["conv1"]))  # (B, 12, 12, 10)
    conv2 = _nchw_flat(_pool_relu(_conv(conv1, p["features"]["conv2"])))  # (B, 320)
    hp = p["head"]
    if head == "default":
        expected = _dense(np.maximum(_dense(conv2, hp["fc_0"]), 0), hp["fc_1"])
    elif name == "mnist_cnn":
        expected = _spinal(_halves(conv2, 6), hp)
    else:
        raw = x.reshape(x.shape[0], -1)
        conv1 = _nchw_flat(conv1)
        z = np.concatenate(
            [
                _spinal(_halves(raw, 10), hp["raw"]),
                _spinal(_halves(conv1, 8), hp["conv1"]),
                _spinal(_halves(conv2, 8), hp["conv2"]),
            ],
            axis=1,
        )
        expected = _dense(np.maximum(_dense(z, hp["fc1"]), 0), hp["fc2"])
    _assert_close(logits, expected)


def _assert_close(actual: jax.Array, expected: np.ndarray) -> None:
    chex.assert_type(actual, jnp.float32)
    chex.assert_shape(actual, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4, atol=1e-5 * scale)


def _np_vgg_features(x: np.ndarray, p: dict, s: dict, cfg: tuple) -> np.ndarray:
    i = 0
    for v in cfg:
        if v == "M":
            x = _max_pool(x, 2, 2)
            continue
        block, stats = p[f"block_{i}"], s[f"block_{i}"]
        x = _relu(_bn(_conv(x, block["conv"], pad=1), block["bn"], stats["bn"]))
        i += 1
    return x


@pytest.mark.parametrize("head", ["default", "spinal"])
def test_vgg5_equals_a_numpy_reference(head):
    model, variables, batch = _initialised("vgg5", head)
    p, s = _np(variables["params"]), _np(variables["batch_stats"])
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M")
    feats = _np_vgg_features(np.asarray(batch, np.float64), p["features"], s["features"], cfg)
    assert feats.shape == (2, 1, 1, 256)
    feats = feats.reshape(2, 256)
    hp, hs = p["head"], s["head"]
    if head == "default":  # Dropout -> Linear -> BN1d -> ReLU -> Dropout -> Linear
        expected = _dense(_relu(_bn(_dense(feats, hp["fc_0"]), hp["bn_0"], hs["bn_0"])), hp["fc_1"])
    else:  # Dropout -> Linear -> BN1d -> ReLU per sub-layer, on halves of 256
        z, outs = None, []
        for i, chunk in enumerate(_halves(feats, 4)):
            inp = chunk if z is None else np.concatenate([chunk, z], axis=1)
            kernel = hp["input_kernel"][i]
            if z is not None:
                kernel = np.concatenate([kernel, hp["hidden_kernel"][i - 1]], axis=0)
            z = _relu(_bn(inp @ kernel + hp["bias"][i], hp[f"bn_{i}"], hs[f"bn_{i}"]))
            outs.append(z)
        expected = _dense(np.concatenate(outs, axis=1), hp["readout"])
    _assert_close(model.apply(variables, batch), expected)


@pytest.mark.parametrize("head", ["default", "spinal"])
def test_cifar_cnn_equals_a_numpy_reference(head):
    model, variables, batch = _initialised("cifar_cnn", head)
    p, s = _np(variables["params"])["features"], _np(variables["batch_stats"])["features"]
    x = np.asarray(batch, np.float64)
    for stage in range(3):
        first, second = p[f"block{stage}_0"], p[f"block{stage}_1"]
        x = _relu(_bn(_conv(x, first["conv"], pad=1), first["bn"], s[f"block{stage}_0"]["bn"]))
        x = _max_pool(_relu(_conv(x, second["conv"], pad=1)), 2, 2)
    feats = _nchw_flat(x)  # (2, 4096)
    hp = _np(variables["params"])["head"]
    if head == "default":
        expected = _dense(_relu(_dense(_relu(_dense(feats, hp["fc_0"])), hp["fc_1"])), hp["fc_2"])
    else:
        expected = _spinal(_halves(feats, 4), hp)
    _assert_close(model.apply(variables, batch), expected)


def test_cifar_resnet_block_equals_a_numpy_reference():
    """conv-BN-ReLU-conv-BN plus a 3x3 stride-2 conv-BN shortcut, and no ReLU after the addition."""
    block = CifarBasicBlock(64, strides=2)
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 32))
    variables = jax.device_put(seeded_variables(jax.eval_shape(block.init, jax.random.key(0), x), seed=1))
    p, s = _np(variables["params"]), _np(variables["batch_stats"])

    def conv_bn(h: np.ndarray, name: str, stride: int) -> np.ndarray:
        return _bn(_conv(h, p[name]["conv"], stride, pad=1), p[name]["bn"], s[name]["bn"])

    h = np.asarray(x, np.float64)
    expected = conv_bn(_relu(conv_bn(h, "conv1", 2)), "conv2", 1) + conv_bn(h, "downsample", 2)
    assert expected.shape == (2, 4, 4, 64) and (expected < 0).any()  # negatives survive: no final ReLU
    _assert_close(block.apply(variables, x), expected)
    identity = CifarBasicBlock(32)
    params = jax.eval_shape(identity.init, jax.random.key(0), x)["params"]
    assert set(params) == {"conv1", "conv2"}  # same shape in and out: identity shortcut


# ------------------------------------------------------------------------------------------------
# Feature maps replaced by known values: flatten order and the spatial spinal head


def _replace_features(feature_map: jax.Array, seen: dict):
    """An interceptor that returns ``feature_map`` from the ``features`` submodule and records the
    arguments the ``head`` submodule is called with."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name == "features":
            return feature_map
        if context.method_name == "__call__" and context.module.name == "head":
            seen["head_input"] = args[0]
        return next_fun(*args, **kwargs)

    return interceptor


def test_cifar_cnn_spinal_head_reads_pytorch_halves():
    model, variables, batch = _initialised("cifar_cnn", "spinal")
    c, h, w = np.meshgrid(np.arange(256), np.arange(4), np.arange(4), indexing="ij")
    nchw = np.broadcast_to(1000 * c + 10 * h + w, (2, 256, 4, 4)).astype(np.float32)
    seen: dict = {}
    with nn.intercept_methods(_replace_features(jnp.asarray(nchw.transpose(0, 2, 3, 1)), seen)):
        model.apply(variables, batch)
    head_input = np.asarray(seen["head_input"])
    np.testing.assert_array_equal(head_input, nchw.reshape(2, 4096))  # PyTorch's x.view(B, -1)
    channels = head_input // 1000
    assert set(np.unique(channels[:, :2048])) == set(range(128))  # the first half: channels 0..127
    assert set(np.unique(channels[:, 2048:])) == set(range(128, 256))


def test_spinal_resnet_head_equals_the_reference_quadrant_order():
    model, variables, batch = _initialised("cifar_resnet18", "spinal")
    fmap = jax.random.normal(jax.random.key(2), (2, 4, 4, 256))
    with nn.intercept_methods(_replace_features(fmap, {})):
        logits = model.apply(variables, batch)
    out1 = np.asarray(fmap, np.float64).transpose(0, 3, 1, 2).reshape(2, 256, 2, 2, 2, 2).max(axis=(3, 5))
    quadrants = [out1[:, :, 0, 0], out1[:, :, 0, 1], out1[:, :, 1, 0], out1[:, :, 1, 1]]
    expected = _spinal(quadrants, _np(variables["params"]["head"]))
    _assert_close(logits, expected)
    assert variables["params"]["head"]["input_kernel"].shape == (4, 256, 256)


def test_resnet_default_head_is_a_4x4_max_pool_and_a_linear():
    model, variables, batch = _initialised("cifar_resnet34", "default")
    fmap = jax.random.normal(jax.random.key(2), (2, 4, 4, 256))
    with nn.intercept_methods(_replace_features(fmap, {})):
        logits = model.apply(variables, batch)
    pooled = np.asarray(fmap, np.float64).max(axis=(1, 2))
    expected = _dense(pooled, _np(variables["params"]["head"]))
    _assert_close(logits, expected)


# ------------------------------------------------------------------------------------------------
# The real initialisers (an 'rbg' key: its init compiles several times faster on CPU than threefry's;
# compiled for compile speed, family_helpers/fast_compile.py)


def _real_init(name: str, head: str, **overrides) -> dict:
    model = create_model(name, num_classes=10, head=head, **overrides)
    x = jnp.zeros((1, *_input_shape(name)), jnp.float32)
    return jit_fast(model.init)(jax.random.key(0, impl="rbg"), x)


def _assert_he_normal_fan_out(kernel: jax.Array) -> None:
    """N(0, sqrt(2 / (kh * kw * out))), not truncated."""
    k = np.asarray(kernel, np.float64)
    std = np.sqrt(2.0 / (k.shape[0] * k.shape[1] * k.shape[-1]))
    np.testing.assert_allclose(k.std(), std, rtol=0.03)
    assert abs(k.mean()) < 0.05 * std
    assert np.abs(k).max() > 3.0 * std  # a normal truncated at 2 std never gets there


def _assert_torch_uniform(values: jax.Array, fan_in: int) -> None:
    """PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    v, bound = np.asarray(values, np.float64), 1.0 / np.sqrt(fan_in)
    assert np.abs(v).max() <= bound
    assert np.abs(v).max() > 0.8 * bound


def test_vgg5_initialisers():
    """Convs He normal fan_out with PyTorch's default bias, BN 1/0, Linear layers PyTorch's default."""
    params = _real_init("vgg5", "default")["params"]
    blocks = list(params["features"].values())
    assert len(blocks) == 10
    for block in blocks:
        kernel = block["conv"]["kernel"]
        if kernel.shape[-2] >= 64:  # enough samples (>= 36k) for a 3 % check of the std
            _assert_he_normal_fan_out(kernel)
        _assert_torch_uniform(block["conv"]["bias"], int(np.prod(kernel.shape[:-1])))
        np.testing.assert_array_equal(block["bn"]["scale"], 1.0)
        np.testing.assert_array_equal(block["bn"]["bias"], 0.0)
    _assert_torch_uniform(params["head"]["fc_0"]["kernel"], 256)


@pytest.mark.parametrize("head", ["default", "spinal"])
def test_cifar_resnet_initialisers(head):
    """Bias-free He-normal convs and zero Linear biases (one block per stage keeps the compile short)."""
    params = _real_init("cifar_resnet18", head, stage_sizes=(1, 1, 1, 1))["params"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params["features"])]
    conv_leaves = [p for p in paths if "['conv']" in p]
    assert conv_leaves and all(p.endswith("['kernel']") for p in conv_leaves)
    _assert_he_normal_fan_out(params["features"]["stage4_0"]["conv2"]["conv"]["kernel"])
    _assert_he_normal_fan_out(params["features"]["stage4_0"]["downsample"]["conv"]["kernel"])
    bias = params["head"]["bias"] if head == "default" else params["head"]["readout"]["bias"]
    np.testing.assert_array_equal(bias, 0.0)


def test_cifar_cnn_convs_keep_pytorch_default_init():
    params = _real_init("cifar_cnn", "spinal")["params"]["features"]
    assert list(params) == ["block0_0", "block0_1", "block1_0", "block1_1", "block2_0", "block2_1"]
    _assert_torch_uniform(params["block2_1"]["conv"]["kernel"], 9 * 256)
    _assert_torch_uniform(params["block2_1"]["conv"]["bias"], 9 * 256)
    assert "bn" in params["block2_0"] and "bn" not in params["block2_1"]


# ------------------------------------------------------------------------------------------------
# Synchronised BatchNorm on real (CPU) devices


def test_bn_axis_name_synchronises_every_batch_norm_across_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.family_helpers.bn_sync", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for case in ("vgg5/spinal", "vgg5/default", "cifar_resnet18/spinal"):
        assert f"OK {case}: BatchNorm synchronised over 2 devices" in proc.stdout


# ------------------------------------------------------------------------------------------------
# Input shapes


@pytest.mark.parametrize(
    "name, shape, message",
    [
        (
            "mnist_cnn",
            (2, 32, 32, 1),
            r"mnist_cnn expects .*\(batch, 28, 28, 1\).*got shape \(2, 32, 32, 1\)",
        ),
        ("mnist_arch2", (2, 28, 28, 3), r"mnist_arch2 expects .*\(batch, 28, 28, 1\)"),
        ("mnist_cnn", (2, 784), r"mnist_cnn expects NHWC .*got shape \(2, 784\)"),
        ("vgg5", (2, 32, 32, 1), r"vgg5 expects .*16 <= H, W <= 31 .*256x1x1.*got shape \(2, 32, 32, 1\)"),
        ("vgg5", (2, 15, 28, 1), r"vgg5 expects .*16 <= H, W <= 31"),
        ("cifar_cnn", (2, 28, 28, 3), r"cifar_cnn expects .*\(batch, 32, 32, 3\)"),
        ("cifar_vgg16_bn", (2, 64, 64, 3), r"cifar_vgg16_bn expects .*32 <= H, W <= 63 .*512x1x1"),
        ("cifar_vgg11_bn", (2, 32, 32, 1), r"cifar_vgg11_bn expects .*\(batch, H, W, 3\)"),
        ("cifar_resnet34", (2, 40, 40, 3), r"cifar_resnet34 expects .*\(batch, 32, 32, 3\)"),
    ],
)
def test_wrong_input_shape_names_the_model_and_the_expected_shape(name, shape, message):
    model = create_model(name, num_classes=10)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("size", [16, 31])
def test_vgg5_accepts_every_size_that_reduces_to_256_features(size):
    model = create_model("vgg5", num_classes=10, head="spinal")
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert params["head"]["input_kernel"].shape == (4, 128, 128)
    assert _size(params) == 3_629_770


def test_bad_head_and_stage_settings_are_rejected():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    with pytest.raises(ValueError, match="unknown head 'wide'"):
        jax.eval_shape(
            create_model("cifar_cnn", 10, head="default").clone(head="wide").init, jax.random.key(0), x
        )
    with pytest.raises(ValueError, match=r"give 4 stage sizes.*\(2, 2\)"):
        jax.eval_shape(create_model("cifar_resnet18", 10, stage_sizes=(2, 2)).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        jax.eval_shape(create_model("cifar_vgg11_bn", 10, spinal_width=0).init, jax.random.key(0), x)
