"""Optimisers, learning-rate schedules and the reference's random-restart-on-plateau rule (optax).

Every optimiser is wrapped in ``optax.inject_hyperparams``, so the learning rate in force lives in the
optimiser state (``opt_state.hyperparams['learning_rate']``): the plateau rule rewrites it there and
the Adam moments carry on, as the reference's write into the PyTorch param groups does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax


def decay_mask(params: Any) -> Any:
    """True for the leaves weight decay applies to: kernels only (no biases, no BatchNorm scale/bias)."""

    def is_kernel(path: tuple[Any, ...], _: Any) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        return "kernel" in str(name)

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def base_learning_rate(optim: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """``optim.learning_rate``, scaled by ``global_batch_size / lr_batch_reference`` when that is > 0."""
    lr = float(optim.learning_rate)
    if optim.lr_batch_reference > 0:
        lr *= global_batch_size / optim.lr_batch_reference
    return lr


def create_schedule(
    schedule: ml_collections.ConfigDict, base_lr: float, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
    """The learning rate as a function of the optimiser step.

    'constant'; 'step': ``base_lr * gamma ** (epoch // step_epochs)`` (PyTorch StepLR stepped per
    epoch); 'warmup_cosine': linear from 0 over ``warmup_epochs``, then cosine down to
    ``final_lr_fraction * base_lr`` at the end of ``num_epochs``.
    """
    if schedule.name == "constant":
        return optax.constant_schedule(base_lr)
    if schedule.name == "step":
        every = schedule.step_epochs * steps_per_epoch
        return optax.exponential_decay(base_lr, every, schedule.gamma, staircase=True)
    if schedule.name == "warmup_cosine":
        total = max(num_epochs * steps_per_epoch, 1)
        warmup = min(int(round(schedule.warmup_epochs * steps_per_epoch)), total - 1)
        return optax.warmup_cosine_decay_schedule(
            0.0, base_lr, warmup, total, end_value=schedule.final_lr_fraction * base_lr
        )
    raise ValueError(f"config.schedule.name = {schedule.name!r}: use 'constant', 'step' or 'warmup_cosine'.")


def create_optimizer(
    optim: ml_collections.ConfigDict,
    learning_rate: float | optax.Schedule,
    structure: Callable[[Callable[[Any], optax.GradientTransformation], Any], optax.GradientTransformation]
    | None = None,
) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov), Adam or AdamW with weight decay masked to kernels.

    SGD and Adam add ``weight_decay * param`` to the gradient (PyTorch's ``weight_decay``); AdamW
    decouples it. The learning rate is an injected hyperparameter.

    ``structure(make, lr)``, when given, assembles the update from ``make(rate)``, the configured
    optimiser at any rate (e.g. one per parameter group: :func:`spinal_jax.finetune.create_optimizer`);
    ``lr`` is the injected rate, the one reported, scheduled and changed by the plateau rule.
    """
    wd = float(optim.weight_decay)

    def make(learning_rate: Any) -> optax.GradientTransformation:
        if optim.name == "adamw":
            return optax.adamw(
                learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=wd, mask=decay_mask
            )
        if optim.name == "sgd":
            core = optax.sgd(learning_rate, momentum=optim.momentum or None, nesterov=optim.nesterov)
        elif optim.name == "adam":
            core = optax.adam(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps)
        else:
            raise ValueError(f"config.optim.name = {optim.name!r}: use 'sgd', 'adam' or 'adamw'.")
        if wd > 0:
            return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), core)
        return core

    if structure is None:
        return optax.inject_hyperparams(make)(learning_rate=learning_rate)

    def structured(learning_rate: Any) -> optax.GradientTransformation:
        return structure(make, learning_rate)

    return optax.inject_hyperparams(structured)(learning_rate=learning_rate)


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate the next update uses, read from an ``inject_hyperparams`` state."""
    return opt_state.hyperparams["learning_rate"]


def set_learning_rate(opt_state: Any, lr: float, replica: int | None = None) -> Any:
    """A copy of ``opt_state`` whose injected learning rate is ``lr`` (moments untouched).

    Works on a replicated state too (the rate keeps its leading device axis). ``replica``: set only that
    replica's rate of a state of stacked seed replicas (rates ``(devices, S)``).
    """
    rates = np.array(opt_state.hyperparams["learning_rate"])
    if replica is None:
        rates[...] = lr
    else:
        rates[:, replica] = lr
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": rates})


@dataclasses.dataclass
class PlateauRule:
    """After an epoch that did not beat the best metric: lr <- base_lr * U**power, U ~ U(0, 1)
    (``mode='random'``, the reference's VGG-5 / CIFAR VGG / ResNet scripts) or lr <- lr / factor
    (``mode='divide'``, its CIFAR-100 CNN script).

    An epoch improves only when strictly better than the best so far. ``state_dict`` /
    ``load_state_dict`` make it JSON-checkpointable; U is a pure function of (seed, draw number).
    """

    base_lr: float
    power: float
    seed: int
    mode: str = "random"
    factor: float = 3.0
    best: float = -float("inf")
    draws: int = 0

    def update(self, metric: float, current_lr: float) -> float | None:
        """Record an epoch's metric; return the new learning rate, or None when it improved."""
        if metric > self.best:
            self.best = float(metric)
            return None
        if self.mode == "divide":
            return float(current_lr / self.factor)
        u = np.random.default_rng([self.seed, self.draws]).uniform()
        self.draws += 1
        return float(self.base_lr * u**self.power)

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.draws = int(state["draws"])
