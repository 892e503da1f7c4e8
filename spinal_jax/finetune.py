"""Fine-tuning modes for a pretrained backbone with a fresh head, as optax transformations.

* ``'full'``: every layer trained by the same optimiser (the reference's transfer recipe,
  docs/SPINALNET.md, "Transfer learning");
* ``'linear_probe'``: the backbone frozen (``optax.set_to_zero``), only the head trained;
* ``'separate_lr'``: head and backbone each with an optimiser of their own (e.g. other learning rates).

The head is the top-level params subtree named by the model's registry entry (``head_path``:
``'fc'`` for the ResNets, ``'classifier'`` for VGG; :func:`spinal_jax.models.head_path`). In
``'linear_probe'`` the backbone's BatchNorm layers still normalise with batch statistics when the
model runs with ``train=True``; keep their running averages with :func:`keep_backbone_batch_stats`.

The trainer (``train.py --config.pretrained=PATH --config.finetune.mode=MODE``) uses
:func:`create_optimizer`, :func:`adapt_train_state` and :func:`load_pretrained_state`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import optax
from flax import struct, traverse_util

from spinal_jax import steps
from spinal_jax.config import FINETUNE_MODES

MODES = FINETUNE_MODES
log = logging.getLogger(__name__)


def param_labels(params: Mapping[str, Any], head: str) -> dict[str, Any]:
    """A tree like ``params`` with ``'head'`` on the leaves under ``params[head]`` and ``'backbone'``
    elsewhere (the label tree of ``optax.multi_transform``)."""
    if head not in params:
        raise ValueError(f"No head subtree {head!r} in params (top level: {sorted(params)}).")
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({k: "head" if k[0] == head else "backbone" for k in flat})


def finetune_transform(
    mode: str,
    head_tx: optax.GradientTransformation,
    backbone_tx: optax.GradientTransformation | None = None,
    *,
    head: str,
) -> optax.GradientTransformation:
    """The optimiser for a fine-tuning ``mode`` (see :data:`MODES`).

    Args:
      mode: 'full' (``head_tx`` for every parameter), 'linear_probe' (``head_tx`` on the head, the
        backbone's updates zeroed) or 'separate_lr' (``head_tx`` on the head, ``backbone_tx`` on the rest).
      head_tx: optimiser of the head (of everything in 'full').
      backbone_tx: optimiser of the backbone; required by 'separate_lr' only.
      head: head subtree name (the registry entry's ``head_path``), e.g. ``'fc'`` or ``'classifier'``.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown fine-tuning mode {mode!r}: use one of {MODES}.")
    if mode == "full":
        if backbone_tx is not None:
            raise ValueError(
                "mode 'full' trains everything with head_tx; use 'separate_lr' for two optimisers."
            )
        return head_tx
    if mode == "linear_probe":
        if backbone_tx is not None:
            raise ValueError("mode 'linear_probe' freezes the backbone; backbone_tx must be None.")
        backbone_tx = optax.set_to_zero()
    elif backbone_tx is None:
        raise ValueError("mode 'separate_lr' needs backbone_tx (e.g. optax.sgd(lr / 10, momentum=0.9)).")
    return optax.multi_transform(
        {"head": head_tx, "backbone": backbone_tx}, lambda params: param_labels(params, head)
    )


def keep_backbone_batch_stats(
    new_stats: Mapping[str, Any], old_stats: Mapping[str, Any], head: str
) -> dict[str, Any]:
    """BatchNorm statistics with the head's from ``new_stats`` and the backbone's from ``old_stats``
    (for a linear probe whose backbone running averages must not move)."""
    return {k: (new_stats[k] if k == head else old_stats[k]) for k in new_stats}


# ---------------------------------------------------------------------------------------------------
# The trainer's hooks: config.pretrained and config.finetune
# ---------------------------------------------------------------------------------------------------


def optimizer_structure(
    mode: str, head: str, backbone_lr_multiplier: float = 0.1
) -> Callable[[Callable[[Any], optax.GradientTransformation], Any], optax.GradientTransformation]:
    """``structure(make, lr)`` for :func:`spinal_jax.optim.create_optimizer`: ``make(lr)`` on the head
    (everything in 'full'), the backbone's updates zeroed ('linear_probe') or ``make(lr * multiplier)``
    on the backbone ('separate_lr')."""
    if mode not in MODES:
        raise ValueError(f"Unknown fine-tuning mode {mode!r}: use one of {MODES}.")

    def structure(
        make: Callable[[Any], optax.GradientTransformation], lr: Any
    ) -> optax.GradientTransformation:
        if mode == "separate_lr":
            return finetune_transform(mode, make(lr), make(lr * backbone_lr_multiplier), head=head)
        return finetune_transform(mode, make(lr), head=head)

    return structure


def create_optimizer(config: Any, learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """``config.optim``'s optimiser (:func:`spinal_jax.optim.create_optimizer`) split by
    ``config.finetune.mode``; the injected (reported, scheduled) learning rate is the head's."""
    from spinal_jax import optim

    mode = config.finetune.mode
    if mode == "full":
        return optim.create_optimizer(config.optim, learning_rate)
    from spinal_jax.models import head_path

    structure = optimizer_structure(
        mode, head_path(config.model.name), float(config.finetune.backbone_lr_multiplier)
    )
    return optim.create_optimizer(config.optim, learning_rate, structure)


class LinearProbeTrainState(steps.TrainState):
    """A TrainState whose updates keep the backbone's BatchNorm statistics (a linear probe): every
    ``apply_gradients(..., batch_stats=new)`` takes only the head's statistics from ``new``."""

    head: str = struct.field(pytree_node=False, default="fc")

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> Any:
        if "batch_stats" in kwargs:
            kwargs["batch_stats"] = keep_backbone_batch_stats(
                kwargs["batch_stats"], self.batch_stats, self.head
            )
        return super().apply_gradients(grads=grads, **kwargs)


def adapt_train_state(config: Any, state: Any) -> Any:
    """``state`` as the fine-tuning mode needs it: in 'linear_probe' a TrainState whose updates keep
    the backbone's BatchNorm running averages (so the backbone is frozen entirely: its parameters by
    the optimiser, its statistics here); unchanged otherwise. Call it before restoring a checkpoint."""
    if config.finetune.mode != "linear_probe":
        return state
    from spinal_jax.models import head_path

    fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
    fields["head"] = head_path(config.model.name)
    return LinearProbeTrainState(**fields)


def load_pretrained_state(config: Any, model: Any, state: Any) -> Any:
    """``state`` (a fresh TrainState of ``model``) with the backbone of ``config.pretrained``.

    Every non-head parameter and BatchNorm statistic becomes the pretrained one, bit for bit; the head
    (``fc`` / ``classifier``, with the config's classes and head kind) stays as initialised, and the
    optimiser state is re-initialised. Raises :class:`spinal_jax.pretrained.WeightsFileNotFoundError`
    (a FileNotFoundError) when the path does not exist and
    :class:`spinal_jax.pretrained.StateDictMismatchError` when the weights are not of
    ``config.model.name``, each naming the fix.
    """
    from spinal_jax import pretrained

    path = os.fspath(config.pretrained)
    arch = config.model.name
    if not os.path.exists(path):
        raise pretrained.WeightsFileNotFoundError(
            f"config.pretrained={path!r} does not exist. Give the directory written by "
            f"`python -m spinal_jax.convert WEIGHTS.pth DIR --arch {arch}`, or a torchvision/timm "
            ".pth/.safetensors file of that architecture."
        )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    try:
        variables = pretrained.init_from_pretrained(model, variables, path, arch=arch)
    except pretrained.StateDictMismatchError as err:
        raise pretrained.StateDictMismatchError(
            f"config.pretrained={path!r} does not fit config.model.name={arch!r}: {err}\nFix: set "
            "--config.model.name to the architecture of the weights, or convert weights of "
            f"{arch!r} (`python -m spinal_jax.convert WEIGHTS.pth DIR --arch {arch}`)."
        ) from err
    params, batch_stats = variables["params"], variables["batch_stats"]
    log.info("Loaded the pretrained %s backbone from %s (fresh head)", arch, path)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))
