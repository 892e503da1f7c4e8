"""Run in a fresh process: on N CPU devices the device-resident epoch and evaluation equal one device's.

Usage: python -m tests.training_helpers.resident_devices N   (sets XLA_FLAGS before importing jax).

Two scanned epochs (no augmentation, a dropout-free BatchNorm model, so that the per-device random keys
play no part) on N devices give the parameters, BatchNorm statistics, optimiser state and per-step
metrics of the same two epochs as one ``train_epoch`` over the global batch on one device: each global
batch holds the same examples. The resident evaluation counts every example exactly once.
"""

from __future__ import annotations

import os
import sys

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N}"

import functools  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import jax_utils  # noqa: E402

from spinal_jax import optim, resident, sources, steps  # noqa: E402
from tests.training_helpers.small_pipeline import SmallPipeline, mnist_data_config  # noqa: E402
from tests.training_helpers.tiny_model import TinyBNNet  # noqa: E402

assert jax.local_device_count() == N, jax.devices()
BATCH, EPOCHS = 32, 2
SIZES = {"train": 200, "validation": 150, "test": 130}
pipe = SmallPipeline(mnist_data_config(batch_size=BATCH, eval_batch_size=50 * N, augment="none"), SIZES)
assert pipe.device_augment is None and pipe.per_device_batch_size == BATCH // N
spe = pipe.steps_per_epoch  # 200 // 32 = 6: the last 8 examples of each permutation are dropped
assert spe == 6

cfg = ml_collections.ConfigDict(dict(name="adam", weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8))
LR = 3e-3
tx = optim.create_optimizer(cfg, LR)
rng = jax.random.PRNGKey(0)
ref_state = steps.create_train_state(rng, TinyBNNet(bn_axis_name=None), (28, 28, 1), tx)
par_state = steps.create_train_state(rng, TinyBNNet(bn_axis_name=steps.AXIS), (28, 28, 1), tx)

data = resident.ResidentData(pipe, ("validation", "test"))
p_state = steps.on_devices(jax_utils.replicate(par_state))
par_metrics = []
for epoch in range(EPOCHS):
    p_state, m = data.train_epoch(p_state, epoch)
    par_metrics.append(jax.device_get(m))
assert data.get_state()["step"] == EPOCHS * spe

# One device, the whole global batch per step, no axis name: the same epochs.
images, labels = pipe.device_split("train", normalize=False)
one = jax.jit(
    functools.partial(
        steps.train_epoch,
        steps_per_epoch=spe,
        batch_size=BATCH,
        stride=BATCH,
        mean=tuple(map(float, pipe.mean)),
        std=tuple(map(float, pipe.std)),
        axis_name=None,
    )
)
ref_metrics = []
for epoch in range(EPOCHS):
    batch = {"image": images, "label": labels}
    ref_state, m = one(ref_state, batch, np.int32(0), np.int32(epoch), np.int32(pipe.config.seed))
    ref_metrics.append(jax.device_get(m))

got = jax_utils.unreplicate(p_state)
# The two runs differ only in float32 summation order (pmean of per-device sums vs one global sum). Adam
# divides by sqrt(v): on a weight whose gradient is near zero that order noise moves the update by a
# fraction of the learning rate (seen: 1.8e-6 = 6e-4 LR on 1 of 15,680 weights with jax's rbg PRNG), so
# weights are compared to 1e-3 LR absolute; all other state keeps the tight tolerance.
chex.assert_trees_all_close(got.params, ref_state.params, rtol=1e-5, atol=1e-3 * LR)
chex.assert_trees_all_close(got.batch_stats, ref_state.batch_stats, rtol=1e-5, atol=1e-6)
chex.assert_trees_all_close(got.opt_state, ref_state.opt_state, rtol=1e-5, atol=1e-6)
assert int(got.step) == int(ref_state.step) == EPOCHS * spe
for par, ref in zip(par_metrics, ref_metrics, strict=True):
    for name in ("loss", "accuracy", "grad_norm", "learning_rate"):
        assert par[name].shape == (N, spe), par[name].shape
        for d in range(N):  # pmean-ed: every device reports the global value
            chex.assert_trees_all_close(par[name][d], ref[name], rtol=1e-5, atol=1e-6)
for leaf in jax.tree.leaves(p_state.params):  # the devices agree
    chex.assert_trees_all_equal(*[np.asarray(leaf[d]) for d in range(N)])
pairs = zip(jax.tree.leaves(got.params), jax.tree.leaves(par_state.params), strict=True)
assert max(float(np.abs(a - b).max()) for a, b in pairs) > 1e-4  # it trained

# Evaluation: the resident sums equal those of the per-batch evaluate() over the host pipeline.
[resident_results] = data.evaluate(p_state)
for split in ("validation", "test"):
    host = sources.evaluate_pipeline(steps.pmap_eval_step(), p_state, pipe, split)
    mine = resident_results[split]
    assert mine["count"] == host["count"] == SIZES[split], (mine, host)
    assert mine["accuracy"] == host["accuracy"] and mine["top5"] == host["top5"], (mine, host)
    np.testing.assert_allclose(mine["loss"], host["loss"], rtol=1e-5)
print("OK resident equivalence on", N, "devices", resident_results)
