"""Gradient accumulation, the EMA of the weights, mixed targets in the step, and the profiler switch, on
real MNIST images: each against an independent computation (the model applied by hand)."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from spinal_jax import build, checkpoints, evaluate, steps, training
from spinal_jax import config as config_lib
from spinal_jax.errors import UserError
from tests.training_helpers.array_pipeline import ArrayPipeline
from tests.training_helpers.mnist_idx import load_mnist
from tests.training_helpers.tiny_model import TinyBNNet


class TinyMLP(nn.Module):
    """No BatchNorm, no dropout: a batch's gradient is the mean of its examples' gradients."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def _batch(n: int = 32) -> dict[str, jnp.ndarray]:
    images, labels = load_mnist("train", n)
    return {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def _state(model: nn.Module, ema: bool = False, lr: float = 0.1) -> steps.TrainState:
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    return steps.create_train_state(jax.random.PRNGKey(0), model, (28, 28, 1), tx, ema=ema)


def test_accumulated_micro_batches_give_the_one_batch_update_without_batchnorm():
    state, batch = _state(TinyMLP()), _batch(32)
    whole, m1 = jax.jit(lambda s, b: steps.train_step(s, b, axis_name=None))(state, batch)
    four = steps.StepOptions(accum_steps=4)
    parts, m4 = jax.jit(lambda s, b: steps.train_step(s, b, four, axis_name=None))(state, batch)
    chex.assert_trees_all_close(parts.params, whole.params, atol=1e-6, rtol=1e-5)  # float32 summation order
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["accuracy"], m1["accuracy"])
    assert not np.allclose(whole.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_accumulation_with_batchnorm_normalises_each_micro_batch_and_updates_statistics_in_turn():
    """With BatchNorm a micro-batch is normalised by its own statistics, and the running statistics are
    updated once per micro-batch, in order: the same as two separate forward passes."""
    model, lr = TinyBNNet(), 0.1
    state, batch = _state(model, lr=lr), _batch(32)
    two = steps.StepOptions(accum_steps=2)
    new, _ = jax.jit(lambda s, b: steps.train_step(s, b, two, axis_name=None))(state, batch)

    stats, grads = state.batch_stats, []
    for half in (slice(0, 16), slice(16, 32)):
        x, y = batch["image"][half], batch["label"][half]

        def loss(params, stats=stats, x=x, y=y):
            logits, upd = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

        (_, stats), g = jax.value_and_grad(loss, has_aux=True)(state.params)
        grads.append(g)
    expected = jax.tree.map(lambda p, a, b: p - lr * (a + b) / 2, state.params, *grads)
    chex.assert_trees_all_close(new.params, expected, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(new.batch_stats, stats, atol=1e-6, rtol=1e-5)
    one, _ = jax.jit(lambda s, b: steps.train_step(s, b, axis_name=None))(state, batch)
    assert not np.allclose(one.batch_stats["BatchNorm_0"]["var"], stats["BatchNorm_0"]["var"])


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_its_definition(warmup):
    options = steps.StepOptions(ema_decay=0.9, ema_warmup=warmup)
    state, batch = _state(TinyBNNet(), ema=True), _batch(32)
    step = jax.jit(lambda s, b: steps.train_step(s, b, options, axis_name=None))
    expected = {"params": state.params, "batch_stats": state.batch_stats}
    for n in range(1, 4):
        state, _ = step(state, batch)
        decay = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        current = {"params": state.params, "batch_stats": state.batch_stats}
        expected = jax.tree.map(lambda e, w, d=decay: d * e + (1 - d) * w, expected, current)
    chex.assert_trees_all_close(state.ema, expected, atol=1e-7, rtol=1e-6)
    assert not np.allclose(state.ema["params"]["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_mixed_targets_are_the_loss_targets():
    """With a mix function the loss is the cross-entropy against its soft targets (here fixed ones)."""
    batch = _batch(8)
    targets = jax.nn.softmax(jnp.arange(80, dtype=jnp.float32).reshape(8, 10) / 30.0)
    options = steps.StepOptions(mix=lambda rng, x, y: (x[::-1], targets))
    state = _state(TinyMLP())
    _, metrics = jax.jit(lambda s, b: steps.train_step(s, b, options, axis_name=None))(state, batch)
    logits = state.apply_fn({"params": state.params}, batch["image"][::-1])
    np.testing.assert_allclose(
        metrics["loss"], optax.softmax_cross_entropy(logits, targets).mean(), rtol=1e-6
    )


def _config(**changes) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.data = config_lib.data_config("mnist", batch_size=32)
    config.optim.name, config.optim.learning_rate, config.log_every_steps = "adam", 3e-3, 5
    config.tensorboard = False
    config.update_from_flattened_dict(changes)
    return config


def _run(workdir, **changes):
    pipe = ArrayPipeline(320, 100, 150, 32)
    return training.train_and_evaluate(
        _config(**changes), workdir, pipeline=pipe, model=TinyBNNet(bn_axis_name="batch")
    )


def test_ema_is_evaluated_checkpointed_and_resumed_exactly(tmp_path):
    full = _run(tmp_path / "full", **{"ema.decay": 0.8, "num_epochs": 2})
    assert 0 < full["ema_test_at_best_validation"] <= 1 and full["ema_best_epoch"] in (1, 2)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all("ema_validation_accuracy" in r and "ema_test_loss" in r for r in epochs)
    pipe, model = ArrayPipeline(320, 100, 150, 32), TinyBNNet(bn_axis_name="batch")
    again = evaluate.evaluate_workdir(tmp_path / "full", "test", "latest", pipe, model, ema=True)
    assert again["weights"] == "ema" and again["accuracy"] == epochs[-1]["ema_test_accuracy"]
    raw = evaluate.evaluate_workdir(tmp_path / "full", "test", "latest", pipe, model)
    assert raw["accuracy"] == epochs[-1]["test_accuracy"]
    _run(tmp_path / "cut", **{"ema.decay": 0.8, "num_epochs": 2, "max_train_steps": 13})
    _run(tmp_path / "cut", **{"ema.decay": 0.8, "num_epochs": 2})
    a, b = checkpoints.final_state(tmp_path / "full"), checkpoints.final_state(tmp_path / "cut")
    assert a.keys() == b.keys() and any(k.startswith("['ema']") for k in a)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a), [
        k for k in a if a[k].tobytes() != b[k].tobytes()
    ]


def test_profile_window_writes_a_trace(tmp_path):
    _run(tmp_path, profile_steps="2:4")
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optim.accum_steps": 3}, "accum_steps=3 must divide the per-device batch"),
        ({"optim.accum_steps": 0}, "accum_steps must be >= 1"),
        ({"ema.decay": 1.0}, "ema.decay must be in"),
        ({"profile_steps": "5"}, "profile_steps = '5'"),
        ({"data.mixup_alpha": -1.0}, "data.mixup_alpha: must be >= 0"),
    ],
)
def test_bad_feature_settings_are_refused(changes, message, tmp_path):
    config = _config(**changes)
    with pytest.raises(UserError, match=message):
        config_lib.validate_config(config)
        from spinal_jax.data import validate_data_config

        validate_data_config(config.data)
        build.step_options(config, ArrayPipeline(64, 0, 0, 32), 10)


def test_configured_mixup_and_accumulation_train_on_the_mixed_batch():
    """``data.mixup_alpha`` / ``cutmix_alpha`` through ``build.step_options``: the step's loss is the
    cross-entropy of the model on ``spinal_jax.mixup.mix``'s images against its targets (same key)."""
    from spinal_jax import mixup

    config = _config(**{"data.mixup_alpha": 0.4, "data.cutmix_alpha": 1.0, "label_smoothing": 0.1})
    options = build.step_options(config, ArrayPipeline(64, 0, 0, 32), 10)
    state, batch = _state(TinyMLP()), _batch(32)
    _, metrics = jax.jit(lambda s, b: steps.train_step(s, b, options, axis_name=None))(state, batch)
    mix_rng = jax.random.fold_in(steps._step_rng(state, None), 1)
    out = mixup.mix(
        mix_rng, batch["image"], batch["label"], 10, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1
    )
    assert not np.allclose(out.images, batch["image"])
    logits = state.apply_fn({"params": state.params}, out.images)
    np.testing.assert_allclose(
        metrics["loss"], optax.softmax_cross_entropy(logits, out.targets).mean(), rtol=1e-5
    )

    accumulated = build.step_options(_config(**{"optim.accum_steps": 4}), ArrayPipeline(64, 0, 0, 32), 10)
    assert accumulated.accum_steps == 4 and accumulated.mix is None
