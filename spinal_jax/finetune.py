"""Fine-tuning modes for a pretrained backbone with a fresh head, as optax transformations.

* ``'full'``: every layer trained by the same optimiser (the reference's transfer recipe, spec §2.7);
* ``'linear_probe'``: the backbone frozen (``optax.set_to_zero``), only the head trained;
* ``'separate_lr'``: head and backbone each with an optimiser of their own (e.g. other learning rates).

The head is the top-level params subtree ``'fc'`` (ResNets) or ``'classifier'`` (VGG), see
:func:`spinal_jax.pretrained.head_name`. In ``'linear_probe'`` the backbone's BatchNorm layers still
normalise with batch statistics when the model runs with ``train=True``; keep their running averages
with :func:`keep_backbone_batch_stats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax
from flax import traverse_util

MODES = ("full", "linear_probe", "separate_lr")


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
      head: head subtree name, ``'fc'`` or ``'classifier'``.
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
