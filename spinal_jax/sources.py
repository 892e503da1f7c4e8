"""Where training batches come from, behind one interface for the training loop.

* :class:`HostData`: the host input pipeline (:mod:`spinal_jax.data`), one pmapped step per call.
* :class:`spinal_jax.resident.ResidentData`: the splits on the devices, one scanned epoch per call
  (``config.data.device_resident=True``).

Both offer ``steps_per_call``, ``compile(p_state)``, ``train(p_state, step) -> (p_state, metrics)``,
``evaluate(p_state) -> {split: {accuracy, top5, loss, count}}`` and the ``get_state`` / ``set_state``
pair that checkpoints store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spinal_jax import steps
from spinal_jax.errors import UserError


def evaluate_pipeline(p_eval: Callable[..., Any], p_state: Any, pipe: Any, split: str) -> dict[str, float]:
    """Accuracy (top-1, top-5), mean loss and count over every example of ``split``.

    Raises a RuntimeError when the pipeline's batches do not hold exactly ``num_examples[split]``
    real examples.
    """
    totals = None
    for batch in pipe.eval_batches(split):
        sums = p_eval(p_state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise RuntimeError(f"The {split!r} split yielded no batches.")
    totals = jax.tree.map(lambda x: float(np.asarray(x)[0]), jax.device_get(totals))
    count = int(round(totals["count"]))
    expected = pipe.num_examples[split]
    if count != expected:
        raise RuntimeError(f"Evaluated {count} examples of {split!r}, the split has {expected}.")
    return {
        "accuracy": totals["correct"] / count,
        "top5": totals["correct_top5"] / count,
        "loss": totals["loss_sum"] / count,
        "count": count,
    }


class HostData:
    """The host pipeline's train iterator stepped one pmapped step at a time, and its evaluation."""

    steps_per_call = 1

    def __init__(self, pipe: Any, splits: Sequence[str], options: steps.StepOptions):
        self.pipe = pipe
        self.splits = tuple(splits)
        self._iterator = pipe.train_iterator()
        self._train = steps.pmap_train_step(options)
        self._eval = steps.pmap_eval_step()

    def compile(self, p_state: Any) -> float | None:
        """Nothing ahead of time: the first step compiles (its time counts as training time)."""
        return None

    def train(self, p_state: Any, step: int) -> tuple[Any, dict[str, jax.Array]]:
        """One step on the next batch; metrics are ``(local_devices,)`` scalars."""
        return self._train(p_state, next(self._iterator))

    def evaluate(self, p_state: Any) -> dict[str, dict[str, float]]:
        return {split: evaluate_pipeline(self._eval, p_state, self.pipe, split) for split in self.splits}

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._iterator.set_state(state)


def eval_splits(config: ml_collections.ConfigDict, pipe: Any) -> list[str]:
    """The non-empty evaluation splits (``test`` only with ``config.eval_test``)."""
    splits = [s for s in ("validation", "test") if pipe.num_examples.get(s, 0) > 0]
    return splits if config.eval_test else [s for s in splits if s != "test"]


def create_source(
    config: ml_collections.ConfigDict, pipe: Any, total_steps: int, options: steps.StepOptions
) -> Any:
    """The :class:`HostData` or device-resident source ``config.data`` asks for, training with ``options``."""
    splits = eval_splits(config, pipe)
    if not config.data.device_resident:
        return HostData(pipe, splits, options)
    if total_steps % pipe.steps_per_epoch:
        raise UserError(
            f"config.max_train_steps={config.max_train_steps}: device-resident runs train whole epochs; use "
            f"a multiple of the {pipe.steps_per_epoch} steps per epoch (or 0)."
        )
    from spinal_jax.resident import ResidentData

    return ResidentData(pipe, splits, options)
