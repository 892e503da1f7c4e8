"""Seeded random values for a model's variables, in place of compiling its ``init``.

On the 2-core CPU, compiling a model's ``init`` (its many random draws) costs seconds per model; the
shapes come free from ``jax.eval_shape(model.init, ...)``, and the real initialisers have tests of their
own. (test_all_models.py draws its own: uniform, in place, seeded per variable path and kept per
process, for its 10^8-weight classifiers shared across models; running means exactly 0 for its
running-mean check. Here running means are nonzero and variances in [1, 1.1), so the NumPy references
of eval-mode BatchNorm can tell mean from variance.)
"""

from __future__ import annotations

import jax
import numpy as np


def seeded_variables(shapes, seed: int = 0) -> dict:
    """NumPy arrays of ``shapes``' tree, shapes and dtypes (a tree of ``jax.ShapeDtypeStruct``): kernels
    N(0, 1/fan_in) (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``, SpinalFC stacks ``(layers, in, out)``),
    BatchNorm scales and running variances in [1, 1.1), everything else N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = jax.tree_util.keystr(path)
        if leaf.ndim >= 2:
            fan_in = leaf.shape[-2] if leaf.ndim == 3 else np.prod(leaf.shape[:-1])
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape)
        elif "'var'" in name or "'scale'" in name:
            value = 1.0 + 0.1 * rng.random(leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return np.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
