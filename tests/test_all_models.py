"""Generic checks run on every registered model, with both heads.

For each: a forward pass on a small batch (shape, finiteness), jit equals no-jit, bf16 compute close to
fp32, a nonzero finite gradient for every parameter (no dead weights), and a train-mode pass that
updates every BatchNorm's running mean.

Everything but the jitted forward runs op by op (no jit; the ImageNet ResNets block by block, each
residual block one small jitted program shared by all blocks and models of its shapes). On the 2-core CPU
machine that is the cheaper way to run 22 architectures: XLA compiles a whole-model program in time
proportional to its layer count (ResNet-152's gradient alone: 16 s), while op by op each distinct
operation compiles once (about 40 ms) and is reused by every later layer and model of the same shapes, so
ResNet-101/152 after ResNet-50 cost a few seconds. The file went from 430-570 s (one jit of everything
per case) to about 385 s, with jit-equals-no-jit now checked for every model instead of four; the
ImageNet ResNets block by block took their 16 cases from 195 to 162 s.

Variables are drawn with NumPy at the shapes ``model.init`` gives (``jax.eval_shape``: no init compile,
which for the ImageNet-size models costs more than the checked step); the initialisers themselves are
tested per family (test_model_families.py, test_imagenet_models.py, test_spinal_fc.py). Gradients for the
"every parameter is used" check are taken in eval mode (in train mode a conv bias that feeds BatchNorm has
an exactly-zero gradient by construction, in PyTorch as here) of a fixed random linear function of the
logits: a log-softmax loss saturates on the large logits of a deep random network and then gives exactly
zero gradients everywhere.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinal_jax.models import create_model, get_spec, list_models, resnet

BATCH = 2


def _small_input(name: str) -> jax.Array:
    h, w, c = get_spec(name).input_shape
    if h > 64:  # ImageNet-size backbones: the smallest input the architecture accepts keeps CPU tests fast
        h = w = 32
    return jax.random.uniform(jax.random.key(0), (BATCH, h, w, c), jnp.float32)


CASES = [(name, head) for name in list_models() for head in ("default", "spinal")]
# The ImageNet ResNets' residual block, compiled once per shape and reused by every block and model of
# that shape. Eager autodiff through ResNet-152's 50 blocks is Python work of about 1 ms per primitive:
# its gradient takes 5.0 s op by op, 1.0 s block by block. One class for the file: one jit cache.
BLOCK_BY_BLOCK = nn.jit(resnet.ResidualBlock, static_argnums=(2,))  # __call__(self, x, train)


def _variables(model, x: jax.Array, seed: int = 1) -> dict:
    """Random float32 variables of ``model``'s shapes, uniform with these moments: kernels mean 0, variance
    1/fan_in; other params mean 0 (1 for BN scales), std 0.1; BatchNorm running means 0, variances 1."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)

    def uniform(shape, std: float, mean: float = 0.0) -> np.ndarray:
        value = rng.random(shape, np.float32)  # in place: the VGG classifiers hold 10^8 weights
        value -= np.float32(0.5)
        value *= np.float32(std * np.sqrt(12.0))
        value += np.float32(mean)
        return value

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.zeros(leaf.shape, leaf.dtype) if "mean" in name else np.ones(leaf.shape, leaf.dtype)
        if len(leaf.shape) >= 2:
            fan_in = int(np.prod(leaf.shape[:-1])) if "kernel" in name else leaf.shape[-2]
            return uniform(leaf.shape, 1 / np.sqrt(fan_in))
        return uniform(leaf.shape, 0.1, 1.0 if "scale" in name else 0.0)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name, head", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_forward_jit_bf16_and_gradients(name, head, monkeypatch):
    classes = 5
    x = _small_input(name)
    model = create_model(name, num_classes=classes, head=head)
    bf16 = create_model(name, num_classes=classes, head=head, dtype=jnp.bfloat16)
    variables = _variables(model, x)
    weights = jax.random.normal(jax.random.key(3), (BATCH, classes))

    def loss(params):
        logits = model.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(logits * weights), logits

    # The whole model in one jitted program, compiled with LLVM's -O0 (half the compile time of a deep
    # ResNet; the numbers it computes are checked against op by op below).
    lowered = jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables)
    jitted = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})(variables)

    # The rest without jit: op by op (each distinct operation compiles once and is reused by every later
    # model), the ImageNet ResNets' residual blocks one jitted block at a time.
    monkeypatch.setattr(resnet, "ResidualBlock", BLOCK_BY_BLOCK)
    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    assert logits.shape == (BATCH, classes)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))

    # jit equals no-jit.
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(logits), rtol=1e-4, atol=1e-5)

    # Every parameter is used: each leaf's gradient is finite and not all zero.
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    dead = [jax.tree_util.keystr(path) for path, g in leaves if not np.any(g != 0)]
    bad = [jax.tree_util.keystr(path) for path, g in leaves if not np.all(np.isfinite(g))]
    assert not dead, f"{name}/{head}: parameters with an all-zero gradient: {dead[:5]}"
    assert not bad, f"{name}/{head}: non-finite gradients: {bad[:5]}"

    # bf16 compute with the same fp32 parameters stays close to fp32 (relative L2 error of the logits).
    low = bf16.apply(variables, x, train=False)
    assert low.dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - logits) / jnp.linalg.norm(logits))
    assert rel < 0.05, f"{name}/{head}: bf16 logits differ from fp32 by {rel:.3f} (relative L2)"

    # Train mode: every BatchNorm's running mean moves towards its batch mean, dropout draws from the
    # 'dropout' stream, all finite.
    out, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    assert bool(jnp.all(jnp.isfinite(out)))
    if "batch_stats" in variables:
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
