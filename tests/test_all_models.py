"""Generic checks run on every registered model, with both heads, on two real test images.

For each: a forward pass (shape, finiteness, logits that depend on the input), jit equals no-jit, bf16
compute close to fp32, a nonzero finite gradient for every parameter (no dead weights), and a train-mode
pass that updates every BatchNorm's running mean.

How the numbers are computed is chosen for the 2-core CPU machine, where XLA compilation is most of the
cost (a fixed ~30 ms per program, then time growing with the program's size):

- Most models: the gradient, the bf16 forward and the train-mode pass in one jitted program, compiled at
  LLVM -O0 with XLA:CPU's elemental emitters (``family_helpers.fast_compile``: a third of the default
  compile time), and the no-jit forward op by op (each distinct operation compiles once and is reused
  by every later layer and model of the same shapes). The program's eval-mode logits are the "jit"
  side of jit equals no-jit, so a miscompile at these settings fails the test.
- The ImageNet ResNets: one program for ResNet-152 takes 28 s to compile, and its forward alone 3 s,
  so the gradient, bf16 and train-mode passes run block by block: each residual block one small jitted
  program shared by all blocks and models of its shapes (ResNet-101/152 after ResNet-50 cost a few
  seconds). The gradient pass's logits are the "jit" side of jit equals no-jit, against the forward op
  by op; the family's whole-model jit equals no-jit is test_imagenet_models.py's ResNet-18 case.

Measured on a 2-core VM, the 16 ImageNet ResNet cases in one process: 79.8 s with
a whole-model jitted forward per case, 70.6 s with conftest's elemental emitters, 55.6 s with the
op-by-op forward and the draws below.

Variables are drawn with NumPy at the shapes ``model.init`` gives (``jax.eval_shape``: no init compile,
which for the ImageNet-size models costs more than the checked step), each from a generator seeded by
its path and shape, once per process (``_DRAWN``); the initialisers themselves are
tested per family (test_model_families.py, test_imagenet_models.py, test_spinal_fc.py). Gradients for the
"every parameter is used" check are taken in eval mode (in train mode a conv bias that feeds BatchNorm has
an exactly-zero gradient by construction, in PyTorch as here) of a fixed random linear function of the
logits: a log-softmax loss saturates on the large logits of a deep random network and then gives exactly
zero gradients everywhere.
"""

from __future__ import annotations

import re
import zlib
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers.fast_compile import jit_fast
from family_helpers.real_images import real_batch

from spinal_jax.models import (
    HEADS,
    DefaultHeadConfig,
    HeadConfig,
    SpinalHeadConfig,
    create_model,
    get_spec,
    list_models,
    make_head,
    resnet,
)

BATCH = 2


def _small_input(name: str) -> jax.Array:
    """Two real test images at the model's input shape: MNIST for one channel, CIFAR-10 for three (the
    ImageNet-size backbones at 32x32, the smallest input they accept, which keeps CPU tests fast)."""
    h, w, c = get_spec(name).input_shape
    images = real_batch(c, BATCH)
    if h <= 64:  # the small-input families get exactly their input shape
        assert images.shape[1:] == (h, w, c), (name, images.shape)
    return jnp.asarray(images)


CASES = [(name, head) for name in list_models() for head in ("default", "spinal")]
# The ImageNet ResNets' residual block, compiled once per shape and reused by every block and model of
# that shape. Eager autodiff through ResNet-152's 50 blocks is Python work of about 1 ms per primitive:
# its gradient takes 5.0 s op by op, 1.0 s block by block. One class for the file: one jit cache.
BLOCK_BY_BLOCK = nn.jit(resnet.ResidualBlock, static_argnums=(2,))  # __call__(self, x, train)


# One process's draws, by variable path and shape: a model drawn after another with the same variable
# (both heads of one backbone; the four ImageNet VGGs' 10^8-weight classifiers; ResNet-50/101/152's
# first blocks) gets the same device array instead of drawing and copying it again.
_DRAWN: dict[tuple[str, tuple[int, ...]], jax.Array] = {}


def _draw(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values for the variable ``name`` (a ``keystr`` path) from a generator seeded by its path
    and shape, uniform with these moments: kernels mean 0, variance 1/fan_in; other params mean 0 (1
    for BN scales), std 0.1; BatchNorm running means 0, variances 1."""
    if "batch_stats" in name:
        return np.zeros(shape, np.float32) if "mean" in name else np.ones(shape, np.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[:-1])) if "kernel" in name else shape[-2]
        std, mean = 1 / np.sqrt(fan_in), 0.0
    else:
        std, mean = 0.1, 1.0 if "scale" in name else 0.0
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    value = rng.random(shape, np.float32)  # in place: the VGG classifiers hold 10^8 weights
    value -= np.float32(0.5)
    value *= np.float32(std * np.sqrt(12.0))
    value += np.float32(mean)
    return value


def _variables(model, x: jax.Array) -> dict:
    """Random float32 device arrays of ``model``'s variable shapes (``_draw``), each on the device once:
    every jitted call or eager op given a NumPy array copies it (0.5 GB for the ImageNet VGGs)."""

    def drawn(path, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        assert leaf.dtype == jnp.float32, (path, leaf.dtype)
        key = (jax.tree_util.keystr(path), leaf.shape)
        if key not in _DRAWN:
            _DRAWN[key] = jax.device_put(_draw(*key))
        return _DRAWN[key]

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return jax.tree_util.tree_map_with_path(drawn, shapes)


class Computed(NamedTuple):
    """What one case computes; the assertions are the same whichever way it was computed."""

    jitted: jax.Array  # (B, C) fp32 eval-mode logits, the whole model in one jitted program
    eager: jax.Array  # (B, C) the same logits without jit
    grads: dict  # gradient of sum(logits * weights) w.r.t. every parameter (eval mode)
    bf16: jax.Array  # (B, C) eval-mode logits computed in bfloat16 with the fp32 parameters
    train_out: jax.Array  # (B, C) train-mode logits
    train_updates: dict  # the 'batch_stats' collection after the train-mode pass


def _gradient_bf16_train(model, bf16, variables: dict, x: jax.Array, weights: jax.Array) -> tuple:
    """``(eval logits, gradient of sum(logits * weights), bf16 logits, train-mode logits, batch_stats)``."""

    def loss(params):
        logits = model.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(logits * weights), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    low = bf16.apply(variables, x, train=False)
    out, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    return logits, grads, low, out, updates


def _in_one_program(model, bf16, variables, x, weights) -> Computed:
    """Gradient, bf16 and train mode in one jitted program; the no-jit forward op by op."""
    logits, *rest = jit_fast(lambda v: _gradient_bf16_train(model, bf16, v, x, weights))(variables)
    return Computed(logits, model.apply(variables, x, train=False), *rest)


def _block_by_block(model, bf16, variables, x, weights, monkeypatch) -> Computed:
    """The no-jit forward op by op; gradient (its logits the "jit" side), bf16 and train mode with each
    residual block one small jitted program shared by all blocks and models of its shapes."""
    eager = model.apply(variables, x, train=False)
    monkeypatch.setattr(resnet, "ResidualBlock", BLOCK_BY_BLOCK)
    logits, *rest = _gradient_bf16_train(model, bf16, variables, x, weights)
    return Computed(logits, eager, *rest)


@pytest.mark.parametrize("name, head", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_forward_jit_bf16_and_gradients(name, head, monkeypatch):
    classes = 5
    x = _small_input(name)
    model = create_model(name, num_classes=classes, head=head)
    bf16 = create_model(name, num_classes=classes, head=head, dtype=jnp.bfloat16)
    variables = _variables(model, x)
    weights = jax.random.normal(jax.random.key(3), (BATCH, classes))
    if name in resnet.RESNET_CONFIGS:
        got = _block_by_block(model, bf16, variables, x, weights, monkeypatch)
    else:
        got = _in_one_program(model, bf16, variables, x, weights)

    assert got.eager.shape == (BATCH, classes)
    assert got.eager.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(got.eager)))
    assert float(jnp.std(got.eager)) > 0  # the logits depend on the image and the class
    # Every family but the MNIST CNNs has BatchNorm.
    assert ("batch_stats" in variables) == (not name.startswith("mnist")), sorted(variables)

    # jit equals no-jit.
    np.testing.assert_allclose(np.asarray(got.jitted), np.asarray(got.eager), rtol=1e-4, atol=1e-5)

    # Every parameter is used: each leaf's gradient is finite and not all zero.
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(got.grads))
    dead = [jax.tree_util.keystr(path) for path, g in leaves if not np.any(g != 0)]
    bad = [jax.tree_util.keystr(path) for path, g in leaves if not np.all(np.isfinite(g))]
    assert not dead, f"{name}/{head}: parameters with an all-zero gradient: {dead[:5]}"
    assert not bad, f"{name}/{head}: non-finite gradients: {bad[:5]}"

    # bf16 compute with the same fp32 parameters stays close to fp32 (relative L2 error of the logits).
    assert got.bf16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(got.bf16 - got.eager) / jnp.linalg.norm(got.eager))
    assert rel < 0.05, f"{name}/{head}: bf16 logits differ from fp32 by {rel:.3f} (relative L2)"

    # Train mode: every BatchNorm's running mean moves towards its batch mean, dropout draws from the
    # 'dropout' stream, all finite.
    assert bool(jnp.all(jnp.isfinite(got.train_out)))
    if "batch_stats" in variables:
        updates = got.train_updates
        assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
        stats = jax.tree_util.tree_leaves_with_path(jax.device_get(updates["batch_stats"]))
        keyed = [(jax.tree_util.keystr(path), value) for path, value in stats]
        still = [key for key, value in keyed if key.endswith("['mean']") and not np.any(value != 0)]
        assert not still, f"{name}/{head}: running means not updated in train mode: {still[:5]}"


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown model 'vgg6'.*vgg5"):
        create_model("vgg6", num_classes=10)


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="Unknown head 'wide'"):
        create_model("vgg5", num_classes=10, head="wide")


@pytest.mark.parametrize("name", list_models())
def test_wrong_input_shape_is_rejected(name):
    h, w, c = get_spec(name).input_shape
    model = create_model(name, num_classes=3)
    wrong = jnp.zeros((1, h, w, c + 1))
    with pytest.raises(ValueError, match=re.escape(str(tuple(wrong.shape)))):
        jax.eval_shape(model.init, jax.random.key(0), wrong)


@pytest.mark.parametrize("name", list_models())
def test_registry_head_path_holds_exactly_the_head(name):
    """The registry entry's head_path is the one top-level subtree that changes with the head kind."""
    spec = get_spec(name)
    x = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
    trees = {
        head: jax.eval_shape(create_model(name, 3, head=head).init, jax.random.key(0), x)["params"]
        for head in HEADS
    }
    assert spec.head_path in trees["default"] and spec.head_path in trees["spinal"]
    backbone = {head: {k: v for k, v in tree.items() if k != spec.head_path} for head, tree in trees.items()}
    assert jax.tree.structure(backbone["default"]) == jax.tree.structure(backbone["spinal"])
    assert set(trees["default"]) == set(trees["spinal"])


def test_spinal_overrides_set_the_head_config():
    model = create_model("vgg5", 10, spinal_width=32, spinal_layers=3, spinal_dropout=0.0, spinal_bn=False)
    assert model.head_cfg.spinal == SpinalHeadConfig(width=32, num_layers=3)
    assert model.head_cfg.default == get_spec("vgg5").head_cfg.default
    direct = create_model("vgg5", 10, head_cfg=model.head_cfg)
    assert direct.head_cfg == model.head_cfg
    assert create_model("cifar_vgg11_bn", 10, dropout_rate=0.25).head_cfg.default.dropout == 0.25


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("vgg5", {"spinal_widht": 3}, "spinal_widht"),  # a typo: the model has no such field
        ("mnist_arch2", {"spinal_layers": 3}, "spinal_layers"),  # its stacks have fixed depths
        ("cifar_resnet18", {"spinal_splits": 3}, "spinal_splits"),  # the spatial head reads positions
        ("resnet18", {"dropout_rate": 0.5}, "dropout_rate"),  # a single Linear has no dropout
    ],
)
def test_overrides_a_model_cannot_honour_raise_type_error(name, overrides, message):
    with pytest.raises(TypeError, match=message):
        create_model(name, 10, **overrides)


def test_make_head_builds_either_kind():
    cfg = HeadConfig(
        spinal=SpinalHeadConfig(width=4, num_layers=2),
        default=DefaultHeadConfig(hidden=(6,), dropout_at=(False, False)),
    )
    x = jnp.ones((2, 8))
    for kind, want in (("spinal", {"input_kernel", "hidden_kernel", "bias", "readout"}), ("default", None)):
        head = make_head(kind, cfg, 3, name="head")
        params = head.init(jax.random.key(0), x)["params"]
        assert head.apply({"params": params}, x).shape == (2, 3)
        assert set(params) == (want or {"fc_0", "fc_1"})
    with pytest.raises(ValueError, match="Unknown head 'wide'"):
        make_head("wide", cfg, 3)
