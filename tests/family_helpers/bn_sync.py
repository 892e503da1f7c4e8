"""Run in a fresh process: a small-family model pmapped over N CPU devices with ``bn_axis_name`` computes
train-mode BatchNorm over the global batch, i.e. the same logits and running statistics as one device
on the whole batch; without ``bn_axis_name`` the statistics differ (so the check can fail).

Usage: python -m tests.family_helpers.bn_sync N   (sets XLA_FLAGS before importing jax).
"""

from __future__ import annotations

import os
import sys

N = int(sys.argv[1])
# Compiled for compile speed (tests/family_helpers/fast_compile.py; half this script's time): what is
# checked is equality of two programs' numbers, both compiled with these settings.
os.environ["XLA_FLAGS"] = (
    f"--xla_force_host_platform_device_count={N} "
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from spinal_jax.models import create_model  # noqa: E402
from tests.family_helpers.seeded_variables import seeded_variables  # noqa: E402
from tests.training_helpers.mnist_idx import load_mnist  # noqa: E402

assert jax.local_device_count() == N, jax.devices()
PER_DEVICE = 4
images = load_mnist("train", N * PER_DEVICE)[0]
rng = np.random.default_rng(0)
cifar_like = rng.random((N * PER_DEVICE, 32, 32, 3), np.float32)

# Dropout off, so that one device and N devices see the same network; BatchNorm in the backbone and head.
CASES = [
    ("vgg5", "spinal", dict(spinal_dropout=0.0), images),
    ("vgg5", "default", dict(dropout_rate=0.0), images),
    ("cifar_resnet18", "spinal", dict(stage_sizes=(1, 1, 1, 1), stem_dropout=0.0), cifar_like),
]


def train_forward(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])


def random_variables(model, x) -> dict:
    return seeded_variables(jax.eval_shape(model.init, jax.random.key(0), x), seed=1)


def pmapped(name: str, head: str, overrides: dict, axis: str | None):
    model = create_model(name, num_classes=10, head=head, bn_axis_name=axis, **overrides)
    return jax.pmap(lambda v, xs: train_forward(model, v, xs), axis_name="batch", in_axes=(None, 0))


for i, (name, head, overrides, x) in enumerate(CASES):
    single_model = create_model(name, num_classes=10, head=head, **overrides)
    variables = random_variables(single_model, x)
    logits, stats = jax.jit(train_forward, static_argnums=0)(single_model, variables, x)
    sharded = x.reshape(N, PER_DEVICE, *x.shape[1:])
    synced_logits, synced_stats = pmapped(name, head, overrides, "batch")(variables, sharded)
    chex.assert_trees_all_close(np.asarray(synced_logits).reshape(logits.shape), logits, rtol=1e-4, atol=1e-4)
    for d in range(N):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, d=d: a[d], synced_stats), stats, rtol=1e-4, atol=1e-5
        )
    if i == 0:  # the control: without the axis name each device normalises with its own statistics
        _, local_stats = pmapped(name, head, overrides, None)(variables, sharded)
        same = jax.tree.map(lambda a, b: np.allclose(a[0], b, rtol=1e-4, atol=1e-5), local_stats, stats)
        assert not all(jax.tree.leaves(same)), f"{name}/{head}: per-device statistics equal the global ones"
    print(f"OK {name}/{head}: BatchNorm synchronised over {N} devices")
