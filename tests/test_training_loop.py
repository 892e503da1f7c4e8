"""The training loop in this process (one CPU device) on real MNIST arrays: NaN stop keeping the last
good checkpoint, workdir/config refusal and overwrite, re-evaluation of the best checkpoint; plus the
optimiser pieces (plateau rule, schedules, weight-decay mask) against hand-computed values."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from spinal_jax import checkpoints, evaluate, optim, training
from spinal_jax import config as config_lib
from tests.training_helpers.array_pipeline import ArrayPipeline
from tests.training_helpers.tiny_model import TinyBNNet


def _config(**changes) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.data = config_lib.data_config("mnist", batch_size=32)
    config.num_epochs = 1
    config.optim.name = "adam"
    config.optim.learning_rate = 3e-3
    config.log_every_steps = 4
    config.checkpoint_every_steps = 5
    config.update_from_flattened_dict(changes)
    return config


def _pipe(**kw) -> ArrayPipeline:
    return ArrayPipeline(kw.pop("n_train", 320), kw.pop("n_val", 100), kw.pop("n_test", 150), 32, **kw)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    pipe = _pipe()
    good = pipe.train_batch

    def poisoned(step, seed_offset=0):  # the 8th batch (loop step 8) holds a NaN pixel
        batch = good(step, seed_offset)
        if step == 7:
            batch["image"] = batch["image"].copy()
            batch["image"][0, 0, 0, 0, 0] = np.nan
        return batch

    pipe.train_batch = poisoned
    with pytest.raises(FloatingPointError) as err:
        training.train_and_evaluate(_config(), tmp_path, pipeline=pipe, model=TinyBNNet(bn_axis_name="batch"))
    message = str(err.value)
    assert "became nan" in message and "at step 8 (epoch 1)" in message
    assert "last good checkpoint (step 5)" in message and "--config.optim.learning_rate" in message
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [5]
    params = checkpoints.final_params(tmp_path)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_workdir_of_another_config_is_refused_unless_overwrite(tmp_path):
    model = TinyBNNet(bn_axis_name="batch")
    first = training.train_and_evaluate(_config(), tmp_path, pipeline=_pipe(), model=model)
    assert first["status"] == "finished" and first["step"] == 10 and first["epochs"] == 1
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["optim"]["learning_rate"] == 3e-3

    # The best checkpoint re-evaluated from disk gives the test accuracy the run reported for it.
    again = evaluate.evaluate_workdir(tmp_path, "test", pipeline=_pipe(), model=model)
    assert again["count"] == 150 and again["checkpoint_step"] == 10
    assert again["accuracy"] == first["test_at_best_validation"]

    with pytest.raises(ValueError, match=r"optim.learning_rate: 0.003 -> 0.01.*--config.overwrite=True"):
        training.train_and_evaluate(
            _config(**{"optim.learning_rate": 1e-2}), tmp_path, pipeline=_pipe(), model=model
        )

    # A longer run of the same config resumes (num_epochs may change); an overwrite starts afresh.
    resumed = training.train_and_evaluate(_config(num_epochs=2), tmp_path, pipeline=_pipe(), model=model)
    assert resumed["step"] == 20 and resumed["epochs"] == 2
    fresh = training.train_and_evaluate(
        _config(**{"optim.learning_rate": 1e-2, "overwrite": True}), tmp_path, pipeline=_pipe(), model=model
    )
    assert fresh["step"] == 10 and fresh["epochs"] == 1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "epoch"] == [10]
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_plateau_rule_random_and_divide():
    rule = optim.PlateauRule(base_lr=0.005, power=3.0, seed=4)
    assert rule.update(0.5, 0.005) is None  # improved
    u = np.random.default_rng([4, 0]).uniform()
    assert rule.update(0.5, 0.005) == pytest.approx(0.005 * u**3)  # equal is not better
    restored = optim.PlateauRule(base_lr=0.005, power=3.0, seed=4)
    restored.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert restored.update(0.4, 1.0) == rule.update(0.4, 1.0)  # same draw after a JSON round trip
    divide = optim.PlateauRule(base_lr=1e-3, power=1.0, seed=0, mode="divide", factor=3.0)
    assert divide.update(0.9, 1e-3) is None
    assert divide.update(0.8, 1e-3) == pytest.approx(1e-3 / 3)


def test_plateau_learning_rate_lives_in_the_optimiser_state_and_moments_persist():
    cfg = ml_collections.ConfigDict(dict(name="adam", momentum=0.0, nesterov=False, weight_decay=0.0,
                                         b1=0.9, b2=0.999, eps=1e-8))  # fmt: skip
    tx = optim.create_optimizer(cfg, 0.005)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)
    changed = optim.set_learning_rate(state, 0.001)
    assert float(optim.current_learning_rate(changed)) == pytest.approx(0.001)
    chex.assert_trees_all_equal(changed.inner_state, state.inner_state)
    updates, _ = tx.update({"w": jnp.full(3, 0.5)}, changed, params)
    mu, nu = 0.9 * 0.05 + 0.05, 0.999 * 0.00025 + 0.00025  # Adam moments after two equal gradients
    expected = -0.001 * (mu / (1 - 0.9**2)) / (np.sqrt(nu / (1 - 0.999**2)) + 1e-8)
    # rtol: Adam's float32 bias correction 1 - 0.999**2 loses about 4 digits to cancellation.
    np.testing.assert_allclose(updates["w"], np.full(3, expected), rtol=1e-4)


def test_schedules_match_their_definitions():
    sched = ml_collections.ConfigDict(dict(name="step", step_epochs=7, gamma=0.1, warmup_epochs=5.0,
                                           final_lr_fraction=0.0))  # fmt: skip
    step = optim.create_schedule(sched, 0.1, steps_per_epoch=10, num_epochs=30)
    assert [float(step(s)) for s in (0, 69, 70, 139, 140)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    sched.name = "warmup_cosine"
    cos = optim.create_schedule(sched, 0.4, steps_per_epoch=10, num_epochs=25)
    assert float(cos(0)) == 0.0 and float(cos(25)) == pytest.approx(0.2)
    assert float(cos(50)) == pytest.approx(0.4)
    assert float(cos(150)) == pytest.approx(0.4 * 0.5 * (1 + np.cos(np.pi * 100 / 200)), rel=1e-5)
    assert float(cos(250)) == pytest.approx(0.0, abs=1e-7)
    cfg = config_lib.base_config().optim
    cfg.learning_rate, cfg.lr_batch_reference = 0.1, 256
    assert optim.base_learning_rate(cfg, 1024) == pytest.approx(0.4)


def test_weight_decay_skips_biases_and_batchnorm():
    params = TinyBNNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    mask = optim.decay_mask(params)
    assert mask == {
        "Conv_0": {"kernel": True},
        "BatchNorm_0": {"scale": False, "bias": False},
        "Dense_0": {"kernel": True, "bias": False},
    }
    cfg = config_lib.base_config().optim
    cfg.name, cfg.weight_decay, cfg.momentum = "sgd", 0.1, 0.0
    tx = optim.create_optimizer(cfg, 1.0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        p = params
        for k in path:
            p = p[k.key]
        expected = -0.1 * p if path[-1].key == "kernel" else jnp.zeros_like(p)
        np.testing.assert_allclose(u, expected, rtol=1e-6)
    assert isinstance(tx, optax.GradientTransformation)


def test_trainer_imports_load_neither_torch_nor_tensorflow_and_tensorboard_gets_scalars(tmp_path):
    """torch is installed here (tensorboardX would import it); the training process must not load it."""
    import struct
    import subprocess
    import sys

    from tensorboardX.proto import event_pb2

    code = (
        "import sys\n"
        "import spinal_jax.training, spinal_jax.evaluate, spinal_jax.checkpoints, spinal_jax.data\n"
        "from spinal_jax.metrics import MetricWriter\n"
        f"w = MetricWriter({str(tmp_path)!r}); w.write(3, 'train', {{'loss': 0.5}}); w.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"

    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    data, scalars = events.read_bytes(), []
    while data:  # TFRecord: uint64 length, uint32 crc, payload, uint32 crc
        (length,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12 : 12 + length])
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        data = data[16 + length :]
    assert scalars == [(3, "train/loss", 0.5)]
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "kind": "train", "loss": 0.5}
