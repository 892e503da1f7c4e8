"""Train state, the train and eval steps, and their pmapped forms (the Flax ImageNet example pattern).

Under ``jax.pmap(..., axis_name='batch')`` each device gets ``(per_device_batch, H, W, C)`` images;
gradients and metrics are averaged with ``lax.pmean`` and BatchNorm statistics are synchronised by the
model's own ``bn_axis_name='batch'``. Called without an axis name (``axis_name=None``) the same steps
run on one device over the whole batch, which is what the multi-device tests compare against.

What a step does besides the plain update is a :class:`StepOptions`: label smoothing, device
augmentation, mixup/cutmix, gradient accumulation over micro-batches, and an exponential moving
average (EMA) of the weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state

AXIS = "batch"
Batch = dict[str, jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]
Mix = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm statistics, the base dropout/augmentation key and the EMA.

    ``rng`` is a raw ``uint32[2]`` key; step ``s`` uses ``fold_in(rng, s)`` on every device, so a
    resumed run draws the same randomness as an uninterrupted one. ``ema`` is ``{'params',
    'batch_stats'}``, the moving average of both, or ``{}`` when the run keeps none.
    """

    batch_stats: Any
    rng: jax.Array
    ema: Any = struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How a train step treats its batch; hashable, so it can key compiled steps.

    Attributes:
      label_smoothing: of the one-hot targets (with ``mix``, the mix function applies it).
      augment: ``(keys (b,), images (b, H, W, C)) -> images`` on the device, one key per example
        (:func:`example_keys`: the keys of the examples' positions in the global batch), or None.
      mix: ``(rng, images, labels (b,)) -> (images, targets (b, classes))`` (mixup/cutmix), or None.
      accum_steps: micro-batches per update: the batch is split into ``accum_steps`` equal parts whose
        gradients are averaged before one optimiser update; BatchNorm statistics are updated once per
        micro-batch, in order.
      ema_decay: > 0 keeps ``state.ema``: ``ema <- decay * ema + (1 - decay) * weights`` after each update.
      ema_warmup: use ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates (early averages forget
        the random initialisation faster).
    """

    label_smoothing: float = 0.0
    augment: Augment | None = None
    mix: Mix | None = None
    accum_steps: int = 1
    ema_decay: float = 0.0
    ema_warmup: bool = False


PLAIN_STEP = StepOptions()  # the plain update: no smoothing, augmentation, mixing, accumulation or EMA


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    tx: optax.GradientTransformation,
    ema: bool = False,
) -> TrainState:
    """Initialise ``model`` on a ``(1, *image_shape)`` float32 input and wrap it with ``tx``; ``ema``
    starts the moving average at the initial weights."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        {"params": params_rng, "dropout": dropout_rng}, dummy
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    average = {"params": params, "batch_stats": batch_stats} if ema else {}
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats, rng=state_rng, ema=average
    )


def ema_view(state: TrainState) -> TrainState:
    """``state`` with its EMA weights and statistics in place of the trained ones (for evaluation)."""
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy ``(B,)`` of float32 ``logits (B, C)`` against int ``labels (B,)``."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
    """The step's key, the same on every device: per-example randomness (dropout masks, augmentation)
    is drawn for the global batch and sliced per device, so it does not depend on the device count.
    Folding the constant 0 keeps the keys of one device as they were when the device index was folded."""
    del axis_name
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)


def example_keys(rng: jax.Array, b: int, axis_name: str | None) -> jax.Array:
    """Keys ``(b,)`` of this device's ``b`` examples: ``split(rng, n_devices * b)`` at the examples'
    global positions ``[i * b, (i + 1) * b)`` on device ``i`` of ``axis_name`` (``split(rng, b)``
    without an axis), so an example's key does not depend on how many devices share the batch."""
    if axis_name is None:
        return jax.random.split(rng, b)
    keys = jax.random.split(rng, jax.lax.psum(1, axis_name) * b)
    return jax.lax.dynamic_slice_in_dim(keys, jax.lax.axis_index(axis_name) * b, b)


def _device_rng(rng: jax.Array, axis_name: str | None) -> jax.Array:
    return rng if axis_name is None else jax.random.fold_in(rng, jax.lax.axis_index(axis_name))


def _loss_and_grads(
    state: TrainState, batch_stats: Any, images: jax.Array, labels: jax.Array, targets: jax.Array | None,
    dropout_rng: jax.Array, label_smoothing: float,
) -> tuple[tuple[jax.Array, jax.Array, Any], Any]:  # fmt: skip
    """((mean loss, logits (b, C) f32, new batch_stats), gradient) of one (micro-)batch."""

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        if targets is None:
            loss = cross_entropy(logits, labels, label_smoothing)
        else:
            loss = optax.softmax_cross_entropy(logits, targets)
        return loss.mean(), (logits, updates.get("batch_stats", {}))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (loss, logits, new_stats), grads


def _accumulated(
    state: TrainState, images: jax.Array, labels: jax.Array, targets: jax.Array | None,
    dropout_rng: jax.Array, options: StepOptions,
) -> tuple[tuple[jax.Array, jax.Array, Any], Any]:  # fmt: skip
    """:func:`_loss_and_grads` over ``options.accum_steps`` micro-batches (a ``lax.scan``): mean loss,
    all logits, the statistics after the last micro-batch, and the mean gradient."""
    k = options.accum_steps
    split = lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:])  # noqa: E731
    micro = {"image": split(images), "label": split(labels), "index": jnp.arange(k)}
    if targets is not None:
        micro["target"] = split(targets)

    def body(carry: tuple[Any, Any], mb: dict[str, jax.Array]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        stats, grad_sum = carry
        rng = jax.random.fold_in(dropout_rng, mb["index"])
        (loss, logits, stats), grads = _loss_and_grads(
            state, stats, mb["image"], mb["label"], mb.get("target"), rng, options.label_smoothing
        )
        return (stats, jax.tree.map(jnp.add, grad_sum, grads)), (loss, logits)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (stats, grad_sum), (losses, logits) = jax.lax.scan(body, (state.batch_stats, zeros), micro)
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return (losses.mean(), logits.reshape(-1, logits.shape[-1]), stats), grads


def _update_ema(old: TrainState, new: TrainState, options: StepOptions) -> TrainState:
    if options.ema_decay <= 0:
        return new
    decay = jnp.asarray(options.ema_decay, jnp.float32)
    if options.ema_warmup:
        n = new.step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    current = {"params": new.params, "batch_stats": new.batch_stats}
    return new.replace(ema=optax.incremental_update(current, old.ema, step_size=1.0 - decay))


def train_step(
    state: TrainState,
    batch: Batch,
    options: StepOptions = PLAIN_STEP,
    *,
    axis_name: str | None = AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on ``batch = {'image': (b, H, W, C) f32, 'label': (b,) int}`` (see :class:`StepOptions`).

    Returns the new state and metrics averaged over all devices: ``loss`` (mean training loss before the
    update), ``accuracy`` (top-1 fraction against the unmixed labels), ``grad_norm`` (global L2 norm of
    the mean gradient) and ``learning_rate`` (the one this update used).
    """
    rng = _step_rng(state, axis_name)
    aug_rng, dropout_rng = jax.random.split(rng)
    images, labels, targets = batch["image"], batch["label"], None
    if options.augment is not None:
        images = options.augment(example_keys(aug_rng, images.shape[0], axis_name), images)
    if options.mix is not None:  # pairs within each device's rows, so each device draws its own
        images, targets = options.mix(_device_rng(jax.random.fold_in(rng, 1), axis_name), images, labels)
    if options.accum_steps > 1:
        (loss, logits, stats), grads = _accumulated(state, images, labels, targets, dropout_rng, options)
    else:
        (loss, logits, stats), grads = _loss_and_grads(
            state, state.batch_stats, images, labels, targets, dropout_rng, options.label_smoothing
        )
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    metrics = {"loss": loss, "accuracy": accuracy}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = _update_ema(state, state.apply_gradients(grads=grads, batch_stats=stats), options)
    # inject_hyperparams stores the rate it just applied (a schedule's value at the old count).
    metrics["learning_rate"] = jnp.asarray(new_state.opt_state.hyperparams["learning_rate"], jnp.float32)
    return new_state, metrics


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """``count``, ``correct`` (top-1), ``correct_top5`` and ``loss_sum`` over the examples ``mask`` marks."""
    logits = logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    return {
        "count": mask.sum(),
        "correct": (top1 * mask).sum(),
        "correct_top5": (top5 * mask).sum(),
        "loss_sum": (cross_entropy(logits, labels) * mask).sum(),
    }


def _eval_logits(state: TrainState, images: jax.Array) -> jax.Array:
    return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images)


def eval_step(state: TrainState, batch: Batch, *, axis_name: str | None = AXIS) -> dict[str, jax.Array]:
    """Sums over the real examples of ``batch`` (``mask (b,)`` bool marks them), across devices.

    Returns ``count``, ``correct`` (top-1), ``correct_top5`` and ``loss_sum`` (cross-entropy).
    """
    sums = eval_sums(_eval_logits(state, batch["image"]), batch["label"], batch["mask"])
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def pmap_train_step(options: StepOptions = PLAIN_STEP, seeds: bool = False) -> Callable[..., Any]:
    """``train_step`` pmapped over the local devices; the replicated state is donated.

    With ``seeds`` the state and the batch carry a seed axis after the device axis (``(devices, S,
    ...)``, see :func:`stack_replicas`): S independent models, each trained on its own batch, in one
    program (``jax.vmap``); the metrics come back ``(devices, S)``.
    """
    step = functools.partial(train_step, options=options, axis_name=AXIS)
    return jax.pmap(jax.vmap(step) if seeds else step, axis_name=AXIS, donate_argnums=(0,))


def pmap_eval_step(seeds: bool = False) -> Callable[..., Any]:
    """``eval_step`` pmapped over the local devices; with ``seeds``, every replica of a stacked state
    on the same batch (sums ``(devices, S)``)."""
    fn = functools.partial(eval_step, axis_name=AXIS)
    return jax.pmap(jax.vmap(fn, in_axes=(0, None)) if seeds else fn, axis_name=AXIS)


# -- Seed replicas: S models of one config, their arrays stacked along a leading seed axis ---------------


def stack_replicas(trees: list[Any]) -> Any:
    """The trees of S replicas as one tree (the first's structure and static fields, e.g. a train state's
    ``apply_fn`` and ``tx``) whose leaves have a leading ``S`` axis."""
    leaves = [jax.tree.leaves(tree) for tree in trees]
    stacked = [np.stack([np.asarray(x) for x in same]) for same in zip(*leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


def replica(tree: Any, index: int, num_seeds: int) -> Any:
    """Replica ``index`` of a stacked ``tree`` (leading seed axis); ``tree`` itself when ``num_seeds``
    is 1 (a single model is never stacked)."""
    return tree if num_seeds == 1 else jax.tree.map(lambda x: x[index], tree)


# -- Whole epochs over device-resident data (the accelerator path; see spinal_jax.resident) ---------------
# On a CPU a scanned step runs many times slower than the same step called from Python, so the per-step
# functions above stay the default; these are for GPUs/TPUs, where per-step dispatch dominates small models.


def epoch_permutation(seed: int, epoch: jax.Array, n: int) -> jax.Array:
    """The order of the ``n`` resident train examples in ``epoch``: ``permutation(fold_in(PRNGKey(seed),
    epoch), n)``, drawn on the device (the same on every device and process)."""
    return jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), n)


def normalize_images(
    images: jax.Array, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> jax.Array:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` (the pipeline's normalisation); float images
    are returned as they are."""
    if images.dtype != jnp.uint8:
        return images
    scaled = images.astype(jnp.float32) / 255.0
    return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def epoch_batch(
    data: Batch,
    perm: jax.Array,
    start: jax.Array,
    batch_size: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Batch:
    """``{'image', 'label'}`` of the examples at positions ``[start, start + batch_size)`` of ``perm``."""
    idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
    images = normalize_images(jnp.take(data["image"], idx, axis=0), mean, std)
    return {"image": images, "label": jnp.take(data["label"], idx, axis=0)}


def train_epoch(
    state: TrainState,
    data: Batch,
    offset: jax.Array,
    epoch: jax.Array,
    seed: jax.Array,
    *,
    steps_per_epoch: int,
    batch_size: int,
    stride: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    options: StepOptions = PLAIN_STEP,
    axis_name: str | None = AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One epoch of :func:`train_step` as a ``lax.scan`` over the resident ``data = {'image': (N, H, W, C),
    'label': (N,)}`` (the whole train split, on this device).

    Step ``k`` trains on positions ``[offset + k * stride, ... + batch_size)`` of
    :func:`epoch_permutation` ``(seed, epoch, N)`` (``seed``: the data seed, an int32 scalar):
    ``batch_size`` is the per-device batch, ``stride`` the per-process batch and ``offset`` this
    device's first position (see :class:`spinal_jax.resident.ResidentData`). Each step is exactly
    ``train_step`` (same rng convention), so the final state equals that of calling ``train_step`` on
    the same batches one by one. Returns the state and the per-step metrics stacked along a leading
    ``steps_per_epoch`` axis.
    """
    perm = epoch_permutation(seed, epoch, data["label"].shape[0])

    def body(state: TrainState, k: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        batch = epoch_batch(data, perm, offset + k * stride, batch_size, mean, std)
        return train_step(state, batch, options, axis_name=axis_name)

    return jax.lax.scan(body, state, jnp.arange(steps_per_epoch, dtype=jnp.int32))


def eval_resident(
    state: TrainState,
    data: Batch,
    *,
    num_splits: int,
    batch_size: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    axis_name: str | None = AXIS,
) -> dict[str, jax.Array]:
    """:func:`eval_step` sums of every resident eval split at once, as a ``lax.scan`` over batches.

    ``data = {'image': (M, H, W, C), 'label': (M,), 'split': (M,) int32}``, ``M`` a multiple of
    ``batch_size``; ``split`` is the example's split number (``-1``: padding, counted nowhere). Returns
    each sum with a leading ``num_splits`` axis, summed over all devices.
    """
    chunks = jax.tree.map(lambda x: x.reshape(-1, batch_size, *x.shape[1:]), data)
    splits = jnp.arange(num_splits, dtype=jnp.int32)

    def body(totals: dict[str, jax.Array], batch: Batch) -> tuple[dict[str, jax.Array], None]:
        logits = _eval_logits(state, normalize_images(batch["image"], mean, std))
        masks = batch["split"][None, :] == splits[:, None]
        sums = jax.vmap(lambda m: eval_sums(logits, batch["label"], m))(masks)
        return jax.tree.map(jnp.add, totals, sums), None

    zeros = {
        k: jnp.zeros((num_splits,), jnp.float32) for k in ("count", "correct", "correct_top5", "loss_sum")
    }
    totals, _ = jax.lax.scan(body, zeros, chunks)
    if axis_name is not None:
        totals = jax.lax.psum(totals, axis_name)
    return totals


@functools.lru_cache(maxsize=16)
def pmap_train_epoch(seeds: bool = False, **options: Any) -> Callable[..., Any]:
    """:func:`train_epoch` with its keyword ``options`` (``steps_per_epoch``, ``batch_size``, ``stride``,
    ``mean``, ``std``, ``options``) pmapped over the local devices: ``fn(p_state, data, offsets, epoch,
    seed)`` with ``data`` and ``offsets`` per device (leading axis), ``epoch`` an int32 scalar and
    ``seed`` the data seed, int32; the state is donated. With ``seeds``, ``p_state`` is stacked
    (``(devices, S, ...)``) and ``seed`` is ``(S,)``: each replica trains its own epoch order on the
    shared data. Cached, so runs of the same shape in one process share the compiled epoch."""
    fn = functools.partial(train_epoch, **options, axis_name=AXIS)
    if seeds:
        fn = jax.vmap(fn, in_axes=(0, None, None, None, 0))
    return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, 0, None, None), donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def pmap_eval_resident(
    *,
    seeds: bool = False,
    num_splits: int,
    batch_size: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Callable[..., Any]:
    """:func:`eval_resident` pmapped over the local devices: ``fn(p_state, data)``; with ``seeds``, every
    replica of a stacked state (sums ``(devices, S, num_splits)``)."""
    fn = functools.partial(
        eval_resident, num_splits=num_splits, batch_size=batch_size, mean=mean, std=std, axis_name=AXIS
    )
    return jax.pmap(jax.vmap(fn, in_axes=(0, None)) if seeds else fn, axis_name=AXIS)


# A copy, not a bare identity, so that no jaxpr-level forwarding can hand back the input arrays as they are.
_identity = jax.pmap(lambda tree: jax.tree.map(jnp.copy, tree), axis_name=AXIS)


def on_devices(tree: Any) -> Any:
    """``tree`` (leading local-device axis; device or host arrays) as a pmap output: on the local devices
    with the sharding pmapped functions return. Passing such arrays to a pmapped function again never
    recompiles it, where arrays from ``jax_utils.replicate`` or numpy (e.g. a learning rate the plateau
    rule set) would, once each."""
    return _identity(tree)
