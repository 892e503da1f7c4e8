"""From a config to what a run trains: the model and its train state (training, evaluation, benchmark).

``build_model`` reads ``config.model`` and ``config.dtype``; ``build_train_state`` adds the optimiser
(``config.optim``, ``config.schedule``, ``config.finetune``) on top of the model's initial variables.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from spinal_jax import finetune, optim, steps
from spinal_jax.errors import UserError


def per_device_batch_size(global_batch: int, local_devices: int, processes: int) -> int:
    """``global_batch / (local_devices * processes)``; a UserError saying how to fix it otherwise."""
    devices = local_devices * processes
    if global_batch <= 0 or global_batch % devices:
        raise UserError(
            f"config.data.batch_size={global_batch} (the global batch) must be a positive multiple of the "
            f"{devices} devices ({processes} process(es) x {local_devices} local devices); e.g. use "
            f"--config.data.batch_size={max(1, round(global_batch / devices)) * devices}."
        )
    return global_batch // devices


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """The configured model, with cross-device BatchNorm over :data:`steps.AXIS` and ``config.dtype``."""
    from spinal_jax.models import create_model, list_models

    if config.model.name not in list_models():
        raise UserError(
            f"config.model.name={config.model.name!r} is not a registered model; choose one of "
            f"{', '.join(list_models())} (python -m spinal_jax.models lists them)."
        )
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    kwargs = config.model.kwargs.to_dict()
    return create_model(
        config.model.name, num_classes, head=config.model.head, dtype=dtype, bn_axis_name=steps.AXIS, **kwargs
    )


def build_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    image_shape: tuple[int, int, int],
    steps_per_epoch: int,
    global_batch_size: int,
) -> tuple[steps.TrainState, float]:
    """The initial train state of ``model`` (seeded by ``config.seed``) and the base learning rate.

    The optimiser follows ``config.optim`` and ``config.finetune``; its learning rate is
    ``config.schedule`` over ``config.num_epochs`` epochs of ``steps_per_epoch`` steps (a plain float
    for the constant schedule, which the plateau rule may change). ``image_shape`` is ``(H, W, C)``.
    """
    base_lr = optim.base_learning_rate(config.optim, global_batch_size)
    if config.schedule.name == "constant":
        learning_rate: Any = base_lr
    else:
        learning_rate = optim.create_schedule(config.schedule, base_lr, steps_per_epoch, config.num_epochs)
    tx = finetune.create_optimizer(config, learning_rate)
    key = jax.random.PRNGKey(config.seed)
    state = steps.create_train_state(key, model, image_shape, tx, ema=config.ema.decay > 0)
    return finetune.adapt_train_state(config, state), base_lr  # linear_probe: backbone BN statistics kept


def build_replica_states(
    config: ml_collections.ConfigDict,
    model: Any,
    image_shape: tuple[int, int, int],
    steps_per_epoch: int,
    global_batch_size: int,
) -> tuple[list[steps.TrainState], float]:
    """:func:`build_train_state` of each of the ``config.num_seeds`` replicas (replica ``r`` seeded as
    :func:`spinal_jax.workdir.replica_config` says: ``seed + r``), and the base learning rate."""
    from spinal_jax.workdir import replica_config

    states = []
    for index in range(config.num_seeds):
        single = replica_config(config, index)
        state, base_lr = build_train_state(single, model, image_shape, steps_per_epoch, global_batch_size)
        states.append(state)
    return states, base_lr


def step_options(config: ml_collections.ConfigDict, pipe: Any, num_classes: int) -> steps.StepOptions:
    """What the train step does besides the update: ``config.label_smoothing``, the device augmentation
    (``data.augment_on='device'``), mixup/cutmix (``data.mixup_alpha`` / ``data.cutmix_alpha``), gradient
    accumulation (``optim.accum_steps``, which must divide the per-device batch) and the EMA (``ema``)."""
    accum = config.optim.accum_steps
    per_device = per_device_batch_size(config.data.batch_size, jax.local_device_count(), jax.process_count())
    if per_device % accum:
        raise UserError(
            f"config.optim.accum_steps={accum} must divide the per-device batch ({per_device}): change "
            "--config.optim.accum_steps or --config.data.batch_size."
        )
    data = config.data
    mix = None
    if data.mixup_alpha > 0 or data.cutmix_alpha > 0:
        from spinal_jax import mixup

        mix = functools.partial(
            _mixed, num_classes=num_classes, mixup_alpha=data.mixup_alpha, cutmix_alpha=data.cutmix_alpha,
            switch_prob=data.mix_switch_prob, prob=data.mix_prob, label_smoothing=config.label_smoothing,
            mode=data.mix_mode, mix=mixup.mix,
        )  # fmt: skip
    return steps.StepOptions(
        label_smoothing=config.label_smoothing,
        augment=pipe.device_augment if data.augment_on == "device" else None,
        mix=mix,
        accum_steps=accum,
        ema_decay=config.ema.decay,
        ema_warmup=config.ema.warmup,
    )


def _mixed(rng: jax.Array, images: jax.Array, labels: jax.Array, *, mix: Any, **options: Any) -> Any:
    """``(images, soft targets)`` of :func:`spinal_jax.mixup.mix`."""
    out = mix(rng, images, labels, **options)
    return out.images, out.targets
