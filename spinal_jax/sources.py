"""Where training batches come from, behind one interface for the training loop.

* :class:`HostData`: the host input pipeline (:mod:`spinal_jax.data`), one pmapped step per call.
* :class:`spinal_jax.resident.ResidentData`: the splits on the devices, one scanned epoch per call
  (``config.data.device_resident=True``).

Both offer ``steps_per_call``, ``compile(p_state)``, ``train(p_state, step) -> (p_state, metrics)``,
``evaluate(p_state) -> [{split: {accuracy, top5, loss, count}}]`` (one dict per seed replica) and the
``get_state(replica)`` / ``set_state(state, replica)`` pair that checkpoints store. With
``config.num_seeds`` S > 1 the train state is S replicas stacked along a seed axis
(:func:`spinal_jax.steps.stack_replicas`), trained in one program.
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
    return evaluate_replicas(p_eval, p_state, pipe, split, num_seeds=1)[0]


def evaluate_replicas(
    p_eval: Callable[..., Any], p_state: Any, pipe: Any, split: str, num_seeds: int
) -> list[dict[str, float]]:
    """:func:`evaluate_pipeline` of each of ``num_seeds`` stacked replicas (``p_eval`` from
    ``steps.pmap_eval_step(seeds=num_seeds > 1)``), one pass over the split for all of them."""
    totals = None
    for batch in pipe.eval_batches(split):
        sums = p_eval(p_state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise RuntimeError(f"The {split!r} split yielded no batches.")
    totals = {k: np.asarray(v[0], np.float64).reshape(num_seeds) for k, v in jax.device_get(totals).items()}
    return [
        _split_results({k: float(v[r]) for k, v in totals.items()}, pipe, split) for r in range(num_seeds)
    ]


def _split_results(totals: dict[str, float], pipe: Any, split: str) -> dict[str, float]:
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
    """The host pipeline's train iterator stepped one pmapped step at a time, and its evaluation.

    With ``num_seeds`` S > 1 the state is stacked (:func:`spinal_jax.steps.stack_replicas`) and replica
    ``r`` trains on its own stream, that of data seed ``data.seed + r`` (``pipe.train_iterator(r)``):
    the batches of the S streams are stacked after the device axis.
    """

    steps_per_call = 1

    def __init__(self, pipe: Any, splits: Sequence[str], options: steps.StepOptions, num_seeds: int = 1):
        self.pipe = pipe
        self.splits = tuple(splits)
        self.num_seeds = num_seeds
        # One seed calls train_iterator() as before, so pipelines without seed offsets still work.
        offsets = range(num_seeds) if num_seeds > 1 else ()
        self._iterators = [pipe.train_iterator(r) for r in offsets] or [pipe.train_iterator()]
        self._train = steps.pmap_train_step(options, seeds=num_seeds > 1)
        self._eval = steps.pmap_eval_step(seeds=num_seeds > 1)

    def compile(self, p_state: Any) -> float | None:
        """Nothing ahead of time: the first step compiles (its time counts as training time)."""
        return None

    def train(self, p_state: Any, step: int) -> tuple[Any, dict[str, jax.Array]]:
        """One step on the next batch; metrics are ``(local_devices,)`` scalars (``(local_devices, S)``)."""
        if self.num_seeds == 1:
            return self._train(p_state, next(self._iterators[0]))
        batches = [next(it) for it in self._iterators]
        return self._train(p_state, jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches))

    def evaluate(self, p_state: Any) -> list[dict[str, dict[str, float]]]:
        """Per replica, ``{split: {accuracy, top5, loss, count}}``."""
        per_split = {
            s: evaluate_replicas(self._eval, p_state, self.pipe, s, self.num_seeds) for s in self.splits
        }
        return [{s: per_split[s][r] for s in self.splits} for r in range(self.num_seeds)]

    def get_state(self, replica: int = 0) -> dict[str, Any]:
        return self._iterators[replica].get_state()

    def set_state(self, state: Mapping[str, Any], replica: int = 0) -> None:
        self._iterators[replica].set_state(state)


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
        return HostData(pipe, splits, options, config.num_seeds)
    if total_steps % pipe.steps_per_epoch:
        raise UserError(
            f"config.max_train_steps={config.max_train_steps}: device-resident runs train whole epochs; use "
            f"a multiple of the {pipe.steps_per_epoch} steps per epoch (or 0)."
        )
    from spinal_jax.resident import ResidentData

    return ResidentData(pipe, splits, options, config.num_seeds)
