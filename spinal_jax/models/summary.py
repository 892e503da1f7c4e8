"""Parameter counts of registered models, split into backbone and head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spinal_jax.models.registry import create_model, get_spec, list_models


def _size(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def param_counts(
    name: str, num_classes: int | None = None, head: str = "spinal", **overrides: Any
) -> dict[str, int]:
    """``{'total', 'head', 'backbone'}`` trainable-parameter counts of one model (no arrays allocated);
    the head is the registry entry's ``head_path`` subtree."""
    spec = get_spec(name)
    model = create_model(name, num_classes=num_classes, head=head, **overrides)
    x = jnp.zeros((1, *spec.input_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    head_count = _size(params[spec.head_path])
    total = _size(params)
    return {"total": total, "head": head_count, "backbone": total - head_count}


def model_table(num_classes: int | None = None) -> list[dict]:
    """One row per registered model with the counts of both heads."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        classes = spec.num_classes if num_classes is None else num_classes
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "num_classes": classes,
                "input_shape": list(spec.input_shape),
                "description": spec.description,
                "default": param_counts(name, classes, "default"),
                "spinal": param_counts(name, classes, "spinal"),
            }
        )
    return rows
