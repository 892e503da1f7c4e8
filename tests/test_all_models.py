"""Generic checks run on every registered model, with both heads.

For each: init and a forward pass on a small batch (shape, finiteness), jit equals no-jit, bf16 compute
close to fp32, and a nonzero finite gradient for every parameter (no dead weights). Gradients for the
"every parameter is used" check are taken in eval mode: in train mode a conv bias that feeds BatchNorm
has an exactly-zero gradient by construction (BN subtracts the batch mean), in PyTorch as here.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinal_jax.models import create_model, get_spec, list_models

BATCH = 2


def _small_input(name: str) -> jax.Array:
    h, w, c = get_spec(name).input_shape
    if h > 64:  # ImageNet-size backbones: the smallest input the architecture accepts keeps CPU tests fast
        h = w = 32
    return jax.random.uniform(jax.random.key(0), (BATCH, h, w, c), jnp.float32)


CASES = [(name, head) for name in list_models() for head in ("default", "spinal")]


@pytest.mark.parametrize("name, head", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_forward_jit_bf16_and_gradients(name, head):
    classes = 5
    x = _small_input(name)
    model = create_model(name, num_classes=classes, head=head)
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(1))

    @jax.jit
    def eval_logits_and_grads(variables):
        def loss(params):
            logits = model.apply({**variables, "params": params}, x, train=False)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return logits, grads

    logits, grads = eval_logits_and_grads(variables)
    assert logits.shape == (BATCH, classes)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))

    # jit equals no-jit (eager op-by-op execution).
    eager = model.apply(variables, x, train=False)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(logits), rtol=1e-4, atol=1e-5)

    # Every parameter is used: each leaf's gradient is finite and not all zero.
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not bool(jnp.any(g != 0))]
    bad = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
           if not bool(jnp.all(jnp.isfinite(g)))]
    assert not dead, f"{name}/{head}: parameters with an all-zero gradient: {dead[:5]}"
    assert not bad, f"{name}/{head}: non-finite gradients: {bad[:5]}"

    # bf16 compute with the same fp32 parameters stays close to fp32 (relative L2 error of the logits).
    bf16 = create_model(name, num_classes=classes, head=head, dtype=jnp.bfloat16)
    low = bf16.apply(variables, x, train=False)
    assert low.dtype == jnp.float32
    rel = float(jnp.linalg.norm(low - logits) / jnp.linalg.norm(logits))
    assert rel < 0.05, f"{name}/{head}: bf16 logits differ from fp32 by {rel:.3f} (relative L2)"

    # Train mode: BatchNorm statistics update, dropout draws from the 'dropout' stream, all finite.
    out, updates = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                               mutable=["batch_stats"])
    assert bool(jnp.all(jnp.isfinite(out)))
    if "batch_stats" in variables:
        assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


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
