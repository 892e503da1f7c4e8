"""An in-memory input pipeline over real MNIST arrays with the spinal_jax.data interface.

Used by the loop tests to exercise training independently of the tfds/grain pipeline: the batch
sequence is a pure function of (seed, epoch, step), so ``get_state``/``set_state`` are exact.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tests.training_helpers.mnist_idx import load_mnist


class _Iterator:
    def __init__(self, pipe: ArrayPipeline, seed_offset: int = 0):
        self.pipe = pipe
        self.seed_offset = seed_offset
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.pipe.train_batch(self.step, self.seed_offset)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


class ArrayPipeline:
    """MNIST: ``n_train`` train, ``n_val`` validation (the next rows of train), ``n_test`` test images."""

    num_classes = 10
    image_shape = (28, 28, 1)
    device_augment = None

    def __init__(
        self,
        n_train: int,
        n_val: int,
        n_test: int,
        batch_size: int,
        seed: int = 0,
        eval_batch_size: int = 1000,
    ):
        images, labels = load_mnist("train", n_train + n_val)
        self.train = images[:n_train], labels[:n_train]
        self.splits = {"validation": (images[n_train:], labels[n_train:]), "test": load_mnist("test", n_test)}
        self.num_examples = {"train": n_train, "validation": n_val, "test": n_test}
        self.devices = jax.local_device_count()
        self.global_batch_size = batch_size
        self.per_device_batch_size = batch_size // (self.devices * jax.process_count())
        self.local_batch = self.per_device_batch_size * self.devices
        self.steps_per_epoch = n_train // batch_size
        self.seed = seed
        self.eval_batch_size = eval_batch_size

    def train_batch(self, step: int, seed_offset: int = 0) -> dict[str, np.ndarray]:
        epoch, k = divmod(step, self.steps_per_epoch)
        rng = np.random.default_rng([self.seed + seed_offset, epoch])
        order = rng.permutation(self.num_examples["train"])
        idx = order[k * self.global_batch_size : (k + 1) * self.global_batch_size]
        idx = idx[jax.process_index() * self.local_batch : (jax.process_index() + 1) * self.local_batch]
        return self._shard({"image": self.train[0][idx], "label": self.train[1][idx]})

    def _shard(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.reshape(self.devices, -1, *v.shape[1:]) for k, v in batch.items()}

    def train_iterator(self, seed_offset: int = 0) -> _Iterator:
        """The batches of data seed ``seed + seed_offset`` (a replica's stream in a multi-seed run)."""
        return _Iterator(self, seed_offset)

    def eval_batches(self, split: str):
        images, labels = self.splits[split]
        n, b = len(labels), self.eval_batch_size
        for start in range(0, n, b):
            img = np.zeros((b, *self.image_shape), np.float32)
            lab = np.zeros((b,), np.int32)
            chunk = slice(start, min(start + b, n))
            m = chunk.stop - chunk.start
            img[:m], lab[:m] = images[chunk], labels[chunk]
            yield self._shard({"image": img, "label": lab, "mask": np.arange(b) < m})
