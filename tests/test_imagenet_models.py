"""ImageNet-size backbones: torchvision's parameter counts, head placement, forward passes, bad input."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers.fast_compile import jit_fast

from spinal_jax.models import create_model, get_spec
from spinal_jax.models.vgg import adaptive_avg_pool

RESNETS = {  # name: (bottleneck?, blocks per stage, groups, width_per_group)
    "resnet18": (False, (2, 2, 2, 2), 1, 64),
    "resnet34": (False, (3, 4, 6, 3), 1, 64),
    "resnet50": (True, (3, 4, 6, 3), 1, 64),
    "resnet101": (True, (3, 4, 23, 3), 1, 64),
    "resnet152": (True, (3, 8, 36, 3), 1, 64),
    "wide_resnet50_2": (True, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (True, (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": (True, (3, 4, 6, 3), 32, 4),
}
VGGS = {  # name: convs per stage (each stage closed by a max-pool), channels 64, 128, 256, 512, 512
    "vgg11_bn": (1, 1, 2, 2, 2),
    "vgg13_bn": (2, 2, 2, 2, 2),
    "vgg16_bn": (2, 2, 3, 3, 3),
    "vgg19_bn": (2, 2, 4, 4, 4),
}
# Published in torchvision's model docs ("num_params", 1000 classes).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnext50_32x4d": 25_028_904,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout  # bias-free conv + BN affine


def resnet_param_count(name: str, num_classes: int) -> int:
    """Trainable parameters of torchvision's ResNet from its architecture arithmetic."""
    bottleneck, stages, groups, wpg = RESNETS[name]
    total = _conv_bn(3, 64, 7)
    cin = 64
    for i, blocks in enumerate(stages):
        planes = 64 * 2**i
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            if bottleneck:
                width, cout = int(planes * wpg / 64) * groups, planes * 4
                total += (
                    _conv_bn(cin, width, 1) + _conv_bn(width, width, 3, groups) + _conv_bn(width, cout, 1)
                )
            else:
                cout = planes
                total += _conv_bn(cin, cout, 3) + _conv_bn(cout, cout, 3)
            if stride != 1 or cin != cout:
                total += _conv_bn(cin, cout, 1)
            cin = cout
    return total + cin * num_classes + num_classes


def vgg_param_count(name: str, num_classes: int) -> int:
    total, cin = 0, 3
    for convs, cout in zip(VGGS[name], (64, 128, 256, 512, 512), strict=True):
        for _ in range(convs):
            total += cin * cout * 9 + cout + 2 * cout  # conv with bias + BN affine
            cin = cout
    return total + (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)


def _abstract_variables(name: str, num_classes: int = 1000, head: str = "default", size: int = 224):
    model = create_model(name, num_classes, head=head)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_default_head_matches_torchvision_count(name):
    arithmetic = resnet_param_count if name in RESNETS else vgg_param_count
    assert arithmetic(name, 1000) == TORCHVISION_PARAMS[name]
    assert _count(_abstract_variables(name)["params"]) == TORCHVISION_PARAMS[name]
    assert get_spec(name).input_shape == (224, 224, 3) and get_spec(name).num_classes == 1000


def test_resnet50_exact_count_and_other_class_counts():
    assert _count(_abstract_variables("resnet50")["params"]) == 25_557_032
    for name, c in (("resnet50", 10), ("wide_resnet101_2", 100), ("vgg19_bn", 10)):
        arithmetic = resnet_param_count if name in RESNETS else vgg_param_count
        assert _count(_abstract_variables(name, c)["params"]) == arithmetic(name, c)


def _spinal_count(d: int, w: int, c: int, k: int = 4, bn: bool = False) -> int:
    s = d // 2  # halves
    return k * s * w + (k - 1) * w * w + k * w + k * w * c + c + (2 * k * w if bn else 0)


def test_vgg19_bn_spinal_head_count_and_place():
    variables = _abstract_variables("vgg19_bn", 10, head="spinal")
    head = variables["params"]["classifier"]
    assert _count(head) == _spinal_count(25088, 1024, 10, bn=True) == 54_579_210
    assert "fc" not in variables["params"]  # the reference's VGG `.fc` bug cannot happen
    assert set(variables["batch_stats"]["classifier"]) == {f"bn_{i}" for i in range(4)}
    backbone = {k: v for k, v in variables["params"].items() if k != "classifier"}
    assert _count(backbone) == vgg_param_count("vgg19_bn", 10) - (
        25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    )


@pytest.mark.parametrize("name,features", [("resnet18", 512), ("resnet50", 2048), ("wide_resnet101_2", 2048)])
def test_resnet_spinal_head_replaces_fc(name, features):
    params = _abstract_variables(name, 10, head="spinal")["params"]
    assert _count(params["fc"]) == _spinal_count(features, 1024, 10)
    assert params["fc"]["input_kernel"].shape == (4, features // 2, 1024)
    total = _count(params)
    assert total == resnet_param_count(name, 10) - (features * 10 + 10) + _spinal_count(features, 1024, 10)


# One model per family and one case per head, with the models' own initialisers at 64x64: init and
# forward in one program, compiled for compile speed. The spinal head on the VGG, as its 25088x4096
# default classifier makes init draw twice the numbers. For the ResNet, the program's logits also equal
# the forward op by op: test_all_models.py jits the ImageNet ResNets block by block, so this is the
# family's whole-model jit equals no-jit. Shapes, finiteness, train mode, bf16 and gradients for every
# model and head: test_all_models.py.
@pytest.mark.parametrize("name, head", [("resnet18", "default"), ("vgg11_bn", "spinal")])
def test_forward_small_resolution(name, head):
    model = create_model(name, 7, head=head)
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3), np.float32)

    def init_and_apply(key):
        variables = model.init(key, x)
        return variables, model.apply(variables, x)

    variables, logits = jit_fast(init_and_apply)(jax.random.PRNGKey(0))
    chex.assert_shape(logits, (2, 7))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    assert float(jnp.std(logits)) > 0
    if name in RESNETS:
        np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_returns_float32_logits():
    """Types only (abstract evaluation); bf16 logits against fp32 for every model: test_all_models.py."""
    model = create_model("resnet18", 3, head="spinal", dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    chex.assert_type(jax.eval_shape(model.apply, variables, x), jnp.float32)
    chex.assert_type(jax.tree.leaves(variables["params"]), jnp.float32)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
@pytest.mark.parametrize("shape", [(1, 64, 64, 1), (1, 16, 64, 3), (64, 64, 3)])
def test_bad_input_shape_message(name, shape):
    model = create_model(name, 10, head="default")
    with pytest.raises(ValueError, match=r"expects NHWC images of shape \(batch, H, W, 3\) with H, W >= 32"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))


def test_unknown_head_message():
    with pytest.raises(ValueError, match="Unknown head 'mlp'"):
        create_model("resnet50", 10, head="mlp")


def _reference_adaptive_avg_pool(x: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """PyTorch's documented AdaptiveAvgPool2d bins, one output cell at a time (NHWC); against torch
    itself: tests/test_pretrained.py, where torch is imported anyway."""
    b, h, w, c = x.shape
    y = np.zeros((b, *out, c), np.float64)
    for i in range(out[0]):
        h0, h1 = math.floor(i * h / out[0]), math.ceil((i + 1) * h / out[0])
        for j in range(out[1]):
            w0, w1 = math.floor(j * w / out[1]), math.ceil((j + 1) * w / out[1])
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 5), (7, 7), (10, 13), (14, 14)])
def test_adaptive_avg_pool_bins(hw):
    x = np.random.default_rng(0).normal(size=(2, *hw, 4)).astype(np.float32)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), (7, 7)))
    np.testing.assert_allclose(got, _reference_adaptive_avg_pool(x, (7, 7)), rtol=1e-6, atol=1e-6)
