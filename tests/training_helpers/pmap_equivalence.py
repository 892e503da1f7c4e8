"""Run in a fresh process: the pmapped step on N CPU devices equals one step over the global batch.

Usage: python pmap_equivalence.py N   (sets XLA_FLAGS before importing jax).
"""

from __future__ import annotations

import os
import sys

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N}"

import chex  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import jax_utils  # noqa: E402

from spinal_jax import optim, steps  # noqa: E402
from tests.training_helpers.mnist_idx import load_mnist  # noqa: E402
from tests.training_helpers.tiny_model import TinyBNNet  # noqa: E402

assert jax.local_device_count() == N, jax.devices()
PER_DEVICE = 4
STEPS = 3
images, labels = load_mnist("train", N * PER_DEVICE * STEPS)

cfg = ml_collections.ConfigDict(
    dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-3, b1=0.9, b2=0.999, eps=1e-8)
)
tx = optim.create_optimizer(cfg, 0.05)
rng = jax.random.PRNGKey(0)
ref_state = steps.create_train_state(rng, TinyBNNet(bn_axis_name=None), (28, 28, 1), tx)
par_state = steps.create_train_state(rng, TinyBNNet(bn_axis_name=steps.AXIS), (28, 28, 1), tx)
chex.assert_trees_all_equal(ref_state.params, par_state.params)

SMOOTH = steps.StepOptions(label_smoothing=0.1)
ref_step = jax.jit(lambda s, b: steps.train_step(s, b, SMOOTH, axis_name=None))
par_step = steps.pmap_train_step(SMOOTH)
p_state = jax_utils.replicate(par_state)
for i in range(STEPS):
    sl = slice(i * N * PER_DEVICE, (i + 1) * N * PER_DEVICE)
    batch = {"image": images[sl], "label": labels[sl]}
    ref_state, ref_metrics = ref_step(ref_state, batch)
    sharded = jax.tree.map(lambda x: x.reshape(N, PER_DEVICE, *x.shape[1:]), batch)
    p_state, p_metrics = par_step(p_state, sharded)
    for name in ("loss", "accuracy", "grad_norm", "learning_rate"):
        chex.assert_trees_all_close(p_metrics[name], np.full(N, ref_metrics[name]), rtol=1e-5, atol=1e-6)

got = jax_utils.unreplicate(p_state)
chex.assert_trees_all_close(got.params, ref_state.params, rtol=1e-5, atol=1e-5)
chex.assert_trees_all_close(got.batch_stats, ref_state.batch_stats, rtol=1e-5, atol=1e-6)
chex.assert_trees_all_close(got.opt_state, ref_state.opt_state, rtol=1e-5, atol=1e-5)
assert int(got.step) == STEPS
# Every device holds the same parameters after the step.
for leaf in jax.tree.leaves(p_state.params):
    chex.assert_trees_all_equal(*[np.asarray(leaf[d]) for d in range(N)])
# The parameters moved: a step that did nothing would also pass the equalities above.
pairs = zip(jax.tree.leaves(got.params), jax.tree.leaves(par_state.params), strict=True)
moved = max(float(np.abs(a - b).max()) for a, b in pairs)
assert moved > 1e-4, moved

# Eval sums with a partial mask: only the masked examples count.
mask = np.zeros(N * PER_DEVICE, bool)
mask[: N * PER_DEVICE - 3] = True
batch = {"image": images[: N * PER_DEVICE], "label": labels[: N * PER_DEVICE], "mask": mask}
ref_sums = jax.jit(lambda s, b: steps.eval_step(s, b, axis_name=None))(ref_state, batch)
p_sums = steps.pmap_eval_step()(
    p_state, jax.tree.map(lambda x: x.reshape(N, PER_DEVICE, *x.shape[1:]), batch)
)
assert float(p_sums["count"][0]) == N * PER_DEVICE - 3
chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], p_sums), ref_sums, rtol=1e-5)
print("OK pmap equivalence on", N, "devices")
