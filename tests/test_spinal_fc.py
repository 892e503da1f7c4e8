"""SpinalFC against an independent NumPy implementation of the spinal formula (docs/SPINALNET.md,
"The head"): z_i = act(Linear_i([chunk_i, z_{i-1}])), logits = Linear_out([z_1 ... z_k]).

The reference below works on PyTorch-layout weights (a Linear W_i of shape (w, in_i)) and builds the
input chunks literally: tile the flattened input until it is long enough and cut it into pieces of
s = round(D / n), as the reference's customisable SpinalNet does. It shares no code with
spinal_jax.layers except the documented weight mapping W_i = concat[input_kernel, hidden_kernel].T.
"""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers.seeded_variables import seeded_variables

from spinal_jax.layers import SpinalFC, spinal_head_param_count


def _numpy_spinal(x, weights, biases, readout_w, readout_b, *, k, n, act, bn=None, spatial=False):
    """z_i = act(BN_i(W_i concat[x_c(i), z_{i-1}] + b_i)); y = W_out concat[z_1..z_k] + b_out."""
    x = np.asarray(x, np.float64)
    if spatial:  # x is NHWC; PyTorch reads x_nchw[:, :, r, c] row-major over (r, c)
        b, h, w, c = x.shape
        positions = [x[:, r, col, :] for r in range(h) for col in range(w)]
        chunks = [positions[i % len(positions)] for i in range(k)]
    else:
        d = x.shape[1]
        s = int(round(d / n))
        tiled = x
        while tiled.shape[1] < k * s:
            tiled = np.concatenate([tiled, x], axis=1)
        chunks = [tiled[:, i * s : (i + 1) * s] for i in range(k)]
    zs = []
    z = None
    for i in range(k):
        inp = chunks[i] if z is None else np.concatenate([chunks[i], z], axis=1)
        pre = inp @ np.asarray(weights[i], np.float64).T + biases[i]
        if bn is not None:
            mean, var, scale, shift = (np.asarray(a, np.float64) for a in bn[i])
            pre = (pre - mean) / np.sqrt(var + 1e-5) * scale + shift
        z = act(pre)
        zs.append(z)
    feats = np.concatenate(zs, axis=1)
    if readout_w is None:
        return feats
    return feats @ np.asarray(readout_w, np.float64).T + readout_b


ACTS = {
    "relu": lambda v: np.maximum(v, 0),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
    "identity": lambda v: v,
}


def _torch_layout(params, k, share):
    """Per-sub-layer (W_i (w, in_i), b_i) in PyTorch's layout from SpinalFC's stored parameters."""
    weights, biases = [], []
    for i in range(k):
        p = min(i, 1) if share else i
        kernel = params["input_kernel"][p]
        if i > 0:
            kernel = np.concatenate([kernel, params["hidden_kernel"][p - 1]], axis=0)
        weights.append(np.asarray(kernel).T)
        biases.append(np.asarray(params["bias"][p], np.float64))
    return weights, biases


def _random_variables(module: SpinalFC, x, seed: int = 1) -> dict:
    """Seeded values for every variable of ``module.init``'s tree, so nothing is left at its init (no
    init program to compile; the initialiser has its own test below)."""
    return seeded_variables(jax.eval_shape(module.init, jax.random.key(0), x), seed)


def _normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


VARIANTS = {
    "halves_k4": dict(d=64, kw=dict(width=16, num_layers=4)),
    "mnist_cnn_k6_w8": dict(d=320, kw=dict(width=8, num_layers=6)),
    "three_splits_tiled": dict(d=10, kw=dict(width=5, num_layers=5, num_splits=3)),
    "eight_splits_uneven": dict(d=50, kw=dict(width=7, num_layers=8, num_splits=8)),
    "batchnorm_eval": dict(d=32, kw=dict(width=12, num_layers=4, use_bn=True, dropout_rate=0.5)),
    "shared_weights": dict(d=40, kw=dict(width=6, num_layers=8, num_splits=8, share_weights=True)),
    "leaky_relu": dict(d=24, kw=dict(width=6, num_layers=6, activation="leaky_relu")),
    "purely_linear": dict(d=24, kw=dict(width=6, num_layers=4, activation="identity")),
    "spatial_2x2": dict(shape=(2, 2, 9), kw=dict(width=5, num_layers=4, spatial=True)),
    "spatial_wraps": dict(shape=(1, 3, 4), kw=dict(width=3, num_layers=7, spatial=True)),
    "single_layer": dict(d=12, kw=dict(width=4, num_layers=1)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("fused", [True, False])
def test_matches_numpy_reference(name, fused):
    variant = VARIANTS[name]
    kw = dict(variant["kw"])
    shape = variant.get("shape", (variant.get("d"),))
    classes = 7
    module = SpinalFC(num_classes=classes, fused=fused, **kw)
    x = _normal(5, *shape)
    variables = _random_variables(module, x)
    got = np.asarray(jax.jit(lambda v: module.apply(v, x, train=False))(variables), np.float64)

    params = variables["params"]
    k = kw["num_layers"]
    weights, biases = _torch_layout(params, k, kw.get("share_weights", False))
    bn = None
    if kw.get("use_bn"):
        stats = variables["batch_stats"]
        bn = [
            (
                stats[f"bn_{i}"]["mean"],
                stats[f"bn_{i}"]["var"],
                params[f"bn_{i}"]["scale"],
                params[f"bn_{i}"]["bias"],
            )
            for i in range(k)
        ]
    want = _numpy_spinal(
        x,
        weights,
        biases,
        np.asarray(params["readout"]["kernel"]).T,
        np.asarray(params["readout"]["bias"], np.float64),
        k=k,
        n=kw.get("num_splits", 2),
        act=ACTS[kw.get("activation", "relu")],
        bn=bn,
        spatial=kw.get("spatial", False),
    )
    assert got.shape == (5, classes)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel <= 1e-5, f"{name}: relative error {rel:.2e}"


def test_features_without_readout():
    module = SpinalFC(width=4, num_classes=None, num_layers=3)
    x = _normal(3, 10)
    variables = _random_variables(module, x)
    assert "readout" not in variables["params"]
    weights, biases = _torch_layout(variables["params"], 3, False)
    want = _numpy_spinal(x, weights, biases, None, None, k=3, n=2, act=ACTS["relu"])
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw", [dict(use_bn=True), dict(share_weights=True, num_layers=5), dict(num_splits=3)]
)
def test_fused_equals_layer_by_layer_in_training(kw):
    """With dropout off, the train-mode forward (batch statistics) and its gradients agree too."""
    module = SpinalFC(width=8, num_classes=4, **kw)
    x = _normal(16, 30)
    variables = _random_variables(module, x)

    def loss(params, fused):
        out, _ = module.clone(fused=fused).apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out**2), out

    @functools.partial(jax.jit, static_argnums=0)
    def loss_and_grads(fused: bool):
        return jax.value_and_grad(loss, has_aux=True)(variables["params"], fused)

    (l1, o1), g1 = loss_and_grads(True)
    (l2, o2), g2 = loss_and_grads(False)
    chex.assert_trees_all_close(o1, o2, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_initialisation_matches_pytorch_bounds():
    """Sub-layer 1 is nn.Linear(s, w), the others nn.Linear(s + w, w): U(+-1/sqrt(fan_in))."""
    s, w = 400, 50
    module = SpinalFC(width=w, num_classes=10, num_layers=4)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 2 * s)))["params"]
    first = params["input_kernel"][0]
    later = jnp.concatenate([params["input_kernel"][1:], params["hidden_kernel"]], axis=1)
    assert float(jnp.abs(first).max()) <= 1 / np.sqrt(s)
    assert float(jnp.abs(first).max()) > 0.95 / np.sqrt(s)
    assert float(jnp.abs(later).max()) <= 1 / np.sqrt(s + w)
    assert float(jnp.abs(later).max()) > 0.95 / np.sqrt(s + w)
    assert float(jnp.abs(params["bias"][0]).max()) <= 1 / np.sqrt(s)
    assert float(jnp.abs(params["bias"][1:]).max()) <= 1 / np.sqrt(s + w)


@pytest.mark.parametrize("seed", range(5))
def test_param_count_matches_formula(seed):
    rng = np.random.default_rng(seed)
    d, k, w, c = (
        int(rng.integers(8, 500)),
        int(rng.integers(1, 9)),
        int(rng.integers(1, 64)),
        int(rng.integers(2, 200)),
    )
    bn = bool(rng.integers(0, 2))
    module = SpinalFC(width=w, num_classes=c, num_layers=k, use_bn=bn)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((2, d)))
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    assert count == spinal_head_param_count(d, w, c, num_layers=k, use_bn=bn)


def test_bf16_compute_keeps_fp32_params():
    module = SpinalFC(width=32, num_classes=10, use_bn=True, dtype=jnp.bfloat16)
    x = _normal(8, 64)
    variables = _random_variables(module, x)
    chex.assert_trees_all_equal_dtypes(
        variables["params"], jax.tree.map(lambda a: a.astype(jnp.float32), variables["params"])
    )
    out = jax.jit(module.apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    ref = jax.jit(module.clone(dtype=jnp.float32).apply)(variables, x)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=5e-2, atol=5e-2)


def test_dropout_train_differs_across_rngs_eval_is_deterministic():
    module = SpinalFC(width=16, num_classes=5, dropout_rate=0.5, use_bn=True)
    x = _normal(8, 40)
    variables = _random_variables(module, x)

    @jax.jit
    def train(seed):
        out, _ = module.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"]
        )
        return out

    assert not np.allclose(train(0), train(1))
    np.testing.assert_array_equal(train(3), train(3))
    evaluate = jax.jit(module.apply)
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def test_dropout_masks_are_independent_per_sub_layer():
    """Sub-layers 1 and 3 read the same half; their dropout masks must differ (separate modules)."""
    module = SpinalFC(width=4, num_classes=None, num_layers=3, dropout_rate=0.5, activation="identity")
    x = jnp.ones((1, 200))
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes["params"])
    # Only sub-layers 1 and 3 see the input, through identical all-ones kernels:
    # z_1 == z_3 unless the masks differ.
    params["input_kernel"][[0, 2]] = 1.0
    out = jax.jit(module.apply, static_argnames="train")(
        {"params": params}, x, train=True, rngs={"dropout": jax.random.key(7)}
    )
    z1, z3 = np.asarray(out[0, :4]), np.asarray(out[0, 8:12])
    assert z1[0] > 0 and z3[0] > 0
    assert not np.allclose(z1, z3)


@pytest.mark.parametrize(
    "kw, x_shape, message",
    [
        (dict(width=8, num_classes=3, num_splits=20), (2, 10), "20 splits"),
        (dict(width=0, num_classes=3), (2, 10), "width must be a positive"),
        (dict(width=-4, num_classes=3), (2, 10), "width must be a positive"),
        (dict(width=4, num_classes=3, num_layers=0), (2, 10), "num_layers"),
        (dict(width=4, num_classes=3), (2, 4, 4, 2), "flatten first"),
        (dict(width=4, num_classes=3, spatial=True), (2, 10), "(B, H, W, C)"),
        (dict(width=4, num_classes=3, activation="gelu2"), (2, 10), "Unknown activation"),
        (dict(width=4, num_classes=3, dropout_rate=1.0), (2, 10), "dropout_rate"),
    ],
)
def test_bad_configuration_raises_clear_error(kw, x_shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jax.eval_shape(SpinalFC(**kw).init, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, jnp.float32))
