"""Train state, the train and eval steps, and their pmapped forms (the Flax ImageNet example pattern).

Under ``jax.pmap(..., axis_name='batch')`` each device gets ``(per_device_batch, H, W, C)`` images;
gradients and metrics are averaged with ``lax.pmean`` and BatchNorm statistics are synchronised by the
model's own ``bn_axis_name='batch'``. Called without an axis name (``axis_name=None``) the same steps
run on one device over the whole batch, which is what the multi-device tests compare against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

AXIS = "batch"
Batch = dict[str, jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm statistics and the base dropout/augmentation key.

    ``rng`` is a raw ``uint32[2]`` key; step ``s`` uses ``fold_in(rng, s)`` (then the device index), so
    a resumed run draws the same randomness as an uninterrupted one.
    """

    batch_stats: Any
    rng: jax.Array


def create_train_state(
    rng: jax.Array, model: nn.Module, image_shape: tuple[int, int, int], tx: optax.GradientTransformation
) -> TrainState:
    """Initialise ``model`` on a ``(1, *image_shape)`` float32 input and wrap it with ``tx``."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        {"params": params_rng, "dropout": dropout_rng}, dummy
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=state_rng,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy ``(B,)`` of float32 ``logits (B, C)`` against int ``labels (B,)``."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    return rng


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    label_smoothing: float = 0.0,
    augment: Augment | None = None,
    axis_name: str | None = AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on ``batch = {'image': (b, H, W, C) f32, 'label': (b,) int}``.

    Returns the new state and metrics averaged over all devices: ``loss`` (mean cross-entropy before
    the update), ``accuracy`` (top-1 fraction), ``grad_norm`` (global L2 norm of the mean gradient)
    and ``learning_rate`` (the one this update used).
    """
    aug_rng, dropout_rng = jax.random.split(_step_rng(state, axis_name))
    images = batch["image"]
    if augment is not None:
        images = augment(aug_rng, images)
    labels = batch["label"]

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        return cross_entropy(logits, labels, label_smoothing).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    metrics = {"loss": loss, "accuracy": accuracy}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    # inject_hyperparams stores the rate it just applied (a schedule's value at the old count).
    metrics["learning_rate"] = jnp.asarray(new_state.opt_state.hyperparams["learning_rate"], jnp.float32)
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, axis_name: str | None = AXIS) -> dict[str, jax.Array]:
    """Sums over the real examples of ``batch`` (``mask (b,)`` bool marks them), across devices.

    Returns ``count``, ``correct`` (top-1), ``correct_top5`` and ``loss_sum`` (cross-entropy).
    """
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
    logits = logits.astype(jnp.float32)
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    sums = {
        "count": mask.sum(),
        "correct": (top1 * mask).sum(),
        "correct_top5": (top5 * mask).sum(),
        "loss_sum": (cross_entropy(logits, labels) * mask).sum(),
    }
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def pmap_train_step(label_smoothing: float = 0.0, augment: Augment | None = None) -> Callable[..., Any]:
    """``train_step`` pmapped over the local devices; the replicated state is donated."""
    step = functools.partial(train_step, label_smoothing=label_smoothing, augment=augment, axis_name=AXIS)
    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def pmap_eval_step() -> Callable[..., Any]:
    """``eval_step`` pmapped over the local devices."""
    return jax.pmap(functools.partial(eval_step, axis_name=AXIS), axis_name=AXIS)
