"""Device-resident data and whole-epoch steps for accelerators (``config.data.device_resident=True``).

Every split is read once through the data pipeline (``pipe.device_split``, uint8 pixels) and put on the
local devices; an epoch is then one call of a compiled ``lax.scan`` of the train step
(:func:`spinal_jax.steps.train_epoch`) and the evaluation of all splits another
(:func:`spinal_jax.steps.eval_resident`), so no batch crosses from the host and Python runs once per epoch.

Layout:

* train: the whole split on every local device, ``(local_devices, N, H, W, C)``. Epoch ``e`` reads the
  permutation :func:`spinal_jax.steps.epoch_permutation` ``(data.seed, e, N)``, drawn on the device.
  Process ``p`` of ``P`` reads its positions ``[p * n, (p + 1) * n)``, ``n = steps_per_epoch * B / P``, in
  consecutive per-process batches split over its local devices: the layout of the host pipeline
  (:mod:`spinal_jax.data.pipeline`), so the global batch is the same examples whatever the number of
  local devices, and the last ``N % B`` examples of each permutation are dropped (``steps_per_epoch =
  N // B``, as there). Augmentation runs on the device (``data.augment_on='device'``).
* evaluation: the evaluated splits concatenated, padded and sharded over all devices of all processes;
  each example carries its split number (padding: -1), so every example is counted exactly once.

Batch ``k`` of epoch ``e`` is a pure function of the config, so a run resumed at an epoch boundary is
exact. On a CPU the scanned step is many times slower than the per-step path (docs/TRAINING.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from spinal_jax import steps
from spinal_jax.data.pipeline import check_data_state
from spinal_jax.errors import UserError

log = logging.getLogger(__name__)

MODE = "device_resident"
# Refuse resident data taking more than this fraction of a device's memory (when the device reports it).
MAX_MEMORY_FRACTION = 0.5


class ResidentData:
    """The splits of ``pipe`` on the local devices, and the compiled epoch and evaluation over them.

    Args:
      pipe: an :class:`spinal_jax.data.InputPipeline` (``device_split``, ``steps_per_epoch``, batch
        sizes, ``mean``/``std``, ``device_augment``, process layout).
      splits: the splits to evaluate (non-empty ones), e.g. ``('validation', 'test')``.
      options: the train step's :class:`spinal_jax.steps.StepOptions` (augmentation runs on the device).
      num_seeds: replicas of a stacked train state (:func:`spinal_jax.steps.stack_replicas`); replica
        ``r`` reads the epoch order of data seed ``data.seed + r``, as a run of that seed alone would.

    It also stands in for the train iterator in checkpoints (``get_state`` / ``set_state``).
    """

    def __init__(
        self,
        pipe: Any,
        splits: Sequence[str],
        options: steps.StepOptions = steps.PLAIN_STEP,
        num_seeds: int = 1,
    ):
        local, processes, index = pipe.local_device_count, pipe.process_count, pipe.process_index
        if local != jax.local_device_count() or processes != jax.process_count():
            raise ValueError(
                f"The pipeline was built for {processes} process(es) x {local} local devices; this process "
                f"has {jax.process_count()} x {jax.local_device_count()}."
            )
        self.pipe = pipe
        self.seed = int(pipe.config.seed)
        self.num_seeds = num_seeds
        seeds = np.arange(self.seed, self.seed + num_seeds, dtype=np.int32)
        self._seeds = seeds if num_seeds > 1 else seeds[0]
        self.steps_per_epoch = pipe.steps_per_epoch
        self.num_train = pipe.num_examples["train"]
        self.splits = tuple(s for s in splits if pipe.num_examples.get(s, 0) > 0)
        self._step = 0
        start = time.perf_counter()

        norm, nbytes = self._load_train(pipe, local, index, processes)
        nbytes += self._load_eval(pipe, local, index, processes)
        self._check_memory(nbytes)
        log.info(
            "Device-resident data: %d train + %s eval examples, %.1f MB per device, loaded in %.1f s",
            self.num_train,
            {s: pipe.num_examples[s] for s in self.splits},
            nbytes / 1e6,
            time.perf_counter() - start,
        )

        self._epoch = steps.pmap_train_epoch(
            seeds=num_seeds > 1,
            steps_per_epoch=self.steps_per_epoch,
            batch_size=pipe.per_device_batch_size,
            stride=pipe.global_batch_size // processes,
            options=options,
            **norm,
        )
        self._eval = (
            steps.pmap_eval_resident(
                seeds=num_seeds > 1,
                num_splits=len(self.splits),
                batch_size=pipe.per_device_eval_batch_size,
                **norm,
            )
            if self.splits
            else None
        )

    def _load_train(self, pipe: Any, local: int, index: int, processes: int) -> tuple[dict[str, Any], int]:
        """Put the train split on every local device; returns the normalisation and its bytes."""
        images, labels = pipe.device_split("train", normalize=False)
        if len(labels) != self.num_train:
            raise RuntimeError(
                f"device_split('train') gave {len(labels)} examples, expected {self.num_train}."
            )
        norm = dict(mean=None, std=None)
        if images.dtype == np.uint8:
            norm = dict(mean=tuple(map(float, pipe.mean)), std=tuple(map(float, pipe.std)))
        per_process = pipe.global_batch_size // processes
        per_device = pipe.per_device_batch_size
        positions = self.steps_per_epoch * per_process  # this process's positions of each permutation
        offsets = np.asarray([index * positions + d * per_device for d in range(local)], np.int32)
        self.train_data = steps.on_devices(
            {
                "image": np.broadcast_to(images, (local, *images.shape)),
                "label": np.broadcast_to(labels, (local, *labels.shape)),
            }
        )
        self.offsets = steps.on_devices(offsets)
        self._dtype = images.dtype
        return norm, images.nbytes + labels.nbytes

    def _load_eval(self, pipe: Any, local: int, index: int, processes: int) -> int:
        """Put the evaluated splits, padded and sharded, on the devices; returns the bytes per device."""
        self.eval_data = None
        nbytes = 0
        eval_batch = pipe.per_device_eval_batch_size
        if self.splits:
            parts = [pipe.device_split(s, normalize=False) for s in self.splits]
            for split, (_, y) in zip(self.splits, parts, strict=True):
                if len(y) != pipe.num_examples[split]:
                    raise RuntimeError(f"device_split({split!r}) gave {len(y)} examples.")
            eval_images = np.concatenate([x.astype(self._dtype) for x, _ in parts])
            eval_labels = np.concatenate([y for _, y in parts])
            split_ids = np.concatenate([np.full(len(y), i, np.int32) for i, (_, y) in enumerate(parts)])
            devices = local * processes
            per_dev = math.ceil(math.ceil(len(eval_labels) / devices) / eval_batch) * eval_batch
            total = per_dev * devices
            pad = total - len(eval_labels)
            eval_images = np.concatenate([eval_images, np.zeros((pad, *eval_images.shape[1:]), self._dtype)])
            eval_labels = np.concatenate([eval_labels, np.zeros(pad, np.int32)])
            split_ids = np.concatenate([split_ids, np.full(pad, -1, np.int32)])
            mine = slice(index * local * per_dev, (index + 1) * local * per_dev)
            shard = {"image": eval_images[mine], "label": eval_labels[mine], "split": split_ids[mine]}
            self.eval_data = steps.on_devices(
                {k: v.reshape(local, per_dev, *v.shape[1:]) for k, v in shard.items()}
            )
            nbytes += sum(v[mine].nbytes for v in (eval_images, eval_labels, split_ids)) // local
        return nbytes

    @staticmethod
    def _check_memory(nbytes: int) -> None:
        stats = jax.local_devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit and nbytes > MAX_MEMORY_FRACTION * limit:
            raise UserError(
                f"data.device_resident=True would keep {nbytes / 2**30:.1f} GiB of data on each device "
                f"(limit {MAX_MEMORY_FRACTION:.0%} of its {limit / 2**30:.1f} GiB): use "
                "data.device_resident=False (the host pipeline) for this data set."
            )

    # -- compiled epoch and evaluation ------------------------------------------------------------------
    def compile(self, p_state: Any) -> float:
        """Compile the epoch and the evaluation for ``p_state`` ahead of time; returns the seconds taken.

        Later calls with states of the same structure (pmap outputs, see :func:`steps.on_devices`) reuse
        these executables.
        """
        start = time.perf_counter()
        self._epoch.lower(p_state, self.train_data, self.offsets, np.int32(0), self._seeds).compile()
        if self._eval is not None:
            self._eval.lower(p_state, self.eval_data).compile()
        return time.perf_counter() - start

    def train_epoch(self, p_state: Any, epoch: int) -> tuple[Any, dict[str, jax.Array]]:
        """Run epoch ``epoch`` (0-based); returns the new state (the old one is donated) and the per-step
        metrics, each ``(local_devices, steps_per_epoch)`` (``(local_devices, S, steps_per_epoch)`` for
        S seeds)."""
        p_state, metrics = self._epoch(p_state, self.train_data, self.offsets, np.int32(epoch), self._seeds)
        self._step = (epoch + 1) * self.steps_per_epoch
        return p_state, metrics

    @property
    def steps_per_call(self) -> int:
        return self.steps_per_epoch

    def train(self, p_state: Any, step: int) -> tuple[Any, dict[str, jax.Array]]:
        """The epoch that starts at ``step`` (a multiple of ``steps_per_epoch``); see :meth:`train_epoch`."""
        return self.train_epoch(p_state, step // self.steps_per_epoch)

    def evaluate(self, p_state: Any) -> list[dict[str, dict[str, float]]]:
        """Per replica, ``{split: {accuracy, top5, loss, count}}`` over every example of each evaluated
        split (the values :func:`spinal_jax.sources.evaluate_pipeline` gives)."""
        if self._eval is None:
            return [{} for _ in range(self.num_seeds)]
        sums = jax.device_get(self._eval(p_state, self.eval_data))
        sums = {k: np.asarray(v[0]).reshape(self.num_seeds, len(self.splits)) for k, v in sums.items()}
        return [self._results({k: v[r] for k, v in sums.items()}) for r in range(self.num_seeds)]

    def _results(self, sums: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """``{split: {accuracy, top5, loss, count}}`` of one model's sums (each ``(num_splits,)``)."""
        out = {}
        for i, split in enumerate(self.splits):
            count = int(round(float(sums["count"][i])))
            if count != self.pipe.num_examples[split]:
                raise RuntimeError(
                    f"Evaluated {count} examples of {split!r}, the split has {self.pipe.num_examples[split]}."
                )
            out[split] = {
                "accuracy": float(sums["correct"][i]) / count,
                "top5": float(sums["correct_top5"][i]) / count,
                "loss": float(sums["loss_sum"][i]) / count,
                "count": count,
            }
        return out

    # -- the data position, as checkpoints store it ------------------------------------------------------
    def _identity(self, replica: int) -> dict[str, Any]:
        p = self.pipe
        return {
            "mode": MODE,
            "dataset": p.config.name,
            "seed": self.seed + replica,
            "global_batch_size": p.global_batch_size,
            "process_index": p.process_index,
            "process_count": p.process_count,
            "num_train_examples": self.num_train,
        }

    def get_state(self, replica: int = 0) -> dict[str, Any]:
        """JSON-serialisable: ``step`` (train steps done, a whole number of epochs) and ``epoch``, with
        what identifies replica ``replica``'s data stream."""
        return {"step": self._step, "epoch": self._step // self.steps_per_epoch, **self._identity(replica)}

    def set_state(self, state: Mapping[str, Any], replica: int = 0) -> None:
        """Continue after ``state['step']`` steps; a state of another data stream is a ValueError."""
        fix = "resume with the same data config (data.device_resident included), seed and process layout"
        check_data_state(state, self._identity(replica), fix)
        step = int(state["step"])
        if step % self.steps_per_epoch:
            raise ValueError(
                f"Checkpoint at step {step} is not at an epoch boundary ({self.steps_per_epoch} steps per "
                "epoch): a device-resident run resumes from epoch ends only."
            )
        self._step = step


__all__ = ["MODE", "ResidentData"]
