"""``create_input_pipeline``: from a data config to sharded, resumable train batches and padded eval batches.

Record order. Each epoch ``e`` draws one permutation of the train split from ``(seed, e)``; process ``p`` of
``P`` reads positions ``[p * n, (p + 1) * n)`` of it, ``n = steps_per_epoch * batch_size / P``. So the
processes read disjoint shards, reshuffled every epoch, and the last ``len(train) % batch_size`` examples of
each permutation are dropped (a different few each epoch). Augmentation randomness is a function of
``(seed, stream position)``. Batch ``k`` is therefore a pure function of the config and ``k``, and an
iterator state is just ``k``: restoring it gives exactly the batches an uninterrupted run would.

Each grain element is a whole batch: its records come from one bulk read (``__getitems__``, about 4x
cheaper per record than single random-access reads), then each example is decoded and augmented.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from spinal_jax.data import augment_host
from spinal_jax.data.catalog import get_dataset_spec
from spinal_jax.data.config import effective_policy, validate_data_config
from spinal_jax.data.errors import DataConfigError, DataPreparationError
from spinal_jax.data.policies import get_policy, make_device_augment
from spinal_jax.data.prepare import prepare_command, prepare_dataset
from spinal_jax.data.records import SplitSource

SPLITS = ("train", "validation", "test")
_MAX_EPOCHS = 1_000_000


def _divisible(batch: int, devices: int) -> list[int]:
    lo, hi = (batch // devices) * devices, (batch // devices + 1) * devices
    return [b for b in (lo, hi) if b > 0]


def _check_divisible(c: ml_collections.ConfigDict, local_device_count: int, process_count: int) -> None:
    """A ``DataConfigError`` unless both global batch sizes divide over all devices of all processes."""
    devices = local_device_count * process_count
    for key in ("batch_size", "eval_batch_size"):
        if c[key] % devices:
            raise DataConfigError(
                f"data.{key}={c[key]} does not divide over {devices} devices ({local_device_count} local "
                f"x {process_count} processes); use a multiple of {devices}, e.g. "
                f"{' or '.join(map(str, _divisible(c[key], devices)))}."
            )


class _TrainRecords:
    """Random-access view of this process's infinite train stream: position -> (record, label)."""

    def __init__(self, source, indices: np.ndarray, per_epoch: int, process_index: int, seed: int):
        self._source, self._indices, self._per_epoch = source, indices, per_epoch
        self._offset, self._seed = process_index * per_epoch, seed
        self._cache: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def __len__(self) -> int:
        return self._per_epoch * _MAX_EPOCHS

    def record_index(self, position: int) -> int:
        epoch, pos = divmod(position, self._per_epoch)
        cached_epoch, perm = self._cache
        if cached_epoch != epoch:
            perm = epoch_permutation(self._seed, epoch, len(self._indices))
            self._cache = (epoch, perm)
        return int(self._indices[perm[self._offset + pos]])

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self._source[self.record_index(position)]

    def read(self, positions: range) -> list[dict[str, Any]]:
        """The records at ``positions``, in one bulk read."""
        return list(self._source.__getitems__([self.record_index(p) for p in positions]))


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The host augmentation randomness of the train example at stream ``position``."""
    return np.random.default_rng([seed, position])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of ``n`` train positions used in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def check_data_state(saved: Mapping[str, Any], identity: Mapping[str, Any], fix: str) -> None:
    """A DataConfigError when a checkpoint's data ``saved`` state is of another data stream than
    ``identity`` (every key of ``identity`` must match); ``fix`` says what to do."""
    diff = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
    if diff:
        raise DataConfigError(
            f"The checkpoint's data state does not match this run ((saved, current): {diff}); {fix}."
        )


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite train batches; ``get_state`` / ``set_state`` save and restore the position exactly."""

    def __init__(self, pipe: InputPipeline, seed_offset: int):
        self._pipe, self._seed_offset, self._step = pipe, seed_offset, 0
        self._it = pipe._train_iter(seed_offset, 0)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._step += 1
        return batch

    def _identity(self) -> dict[str, Any]:
        p = self._pipe
        return {
            "dataset": p.config.name,
            "seed": p.config.seed + self._seed_offset,
            "global_batch_size": p.global_batch_size,
            "process_index": p.process_index,
            "process_count": p.process_count,
            "num_train_examples": p.num_examples["train"],
            "stream": p.stream_fingerprint(),
        }

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable: ``step`` (batches yielded), ``epoch``, ``position`` (step within the epoch)."""
        epoch, position = divmod(self._step, self._pipe.steps_per_epoch)
        return {"step": self._step, "epoch": epoch, "position": position, **self._identity()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue after ``state['step']`` batches; a state of a different data stream is a ValueError."""
        check_data_state(state, self._identity(), "resume with the same data config, seed and process layout")
        self._step = int(state["step"])
        self._it = self._pipe._train_iter(self._seed_offset, self._step)


class InputPipeline:
    """Sharded train/eval input for one data set. Build with :func:`create_input_pipeline`."""

    def __init__(self, config, local_device_count: int, process_index: int, process_count: int):
        self.config = c = validate_data_config(config)
        self.spec = spec = get_dataset_spec(c.name)
        self.local_device_count, self.process_index, self.process_count = (
            local_device_count,
            process_index,
            process_count,
        )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count}).")
        devices = local_device_count * process_count
        _check_divisible(c, local_device_count, process_count)
        self.global_batch_size = c.batch_size
        self.per_device_batch_size = c.batch_size // devices
        self.per_device_eval_batch_size = c.eval_batch_size // devices

        self.dataset = prepare_dataset(c)
        self.class_names: list[str] = list(self.dataset.class_names)
        self.num_classes = len(self.class_names)
        self._sources: dict[str, SplitSource] = {}
        self._indices = self._split_indices()
        self.num_examples = {s: len(ix) for s, (_, ix) in self._indices.items()}
        self.steps_per_epoch = self.num_examples["train"] // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataConfigError(
                f"data.batch_size={c.batch_size} exceeds the {self.num_examples['train']} "
                f"train examples of {c.name!r}; use a smaller batch."
            )

        self.policy = effective_policy(c)
        # ImageNet-style evaluation (resize, central crop) for the policy trained with, or, when not
        # augmenting, for the data set's reference policy.
        self._eval_center_crop = get_policy(self.policy).eval_center_crop or (
            c.augment == "none" and get_policy(spec.policy).eval_center_crop
        )
        native = self._native_shape()
        size = c.image_size or spec.default_image_size
        self.image_shape = (size, size, native[2]) if size else native
        mean, std = (c.mean, c.std) if c.mean else spec.stats
        if len(mean) != self.image_shape[2]:
            raise DataConfigError(
                f"data.mean / data.std: {len(mean)} values for {self.image_shape[2]}-channel "
                f"images of {c.name!r}; give one per channel."
            )
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.device_augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None
        if c.augment_on == "device" and self.policy != "none":
            self.device_augment = make_device_augment(self.policy, self.mean, self.std, self.image_shape)

    def stream_fingerprint(self) -> str:
        """Hash of the config fields that decide the train batches (not paths, workers or eval settings)."""
        ignored = {
            "data_dir",
            "manual_dir",
            "num_workers",
            "num_threads",
            "prefetch",
            "prepare",
            "eval_batch_size",
            "device_resident",  # resident runs do not read this stream
        }
        fields = {k: v for k, v in self.config.to_dict().items() if k not in ignored}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:16]

    # -- splits -----------------------------------------------------------------------------------------
    def _split_indices(self) -> dict[str, tuple[str, np.ndarray]]:
        prepared = set(self.dataset.splits)
        names = {k: v for k, v in self.spec.splits.items() if v in prepared}
        if "validation" not in names and "validation" in prepared:
            names["validation"] = "validation"
        for s in ("train", "test"):
            if s not in names:
                raise DataPreparationError(
                    f"Data set {self.config.name!r} has no {s!r} split (prepared: {sorted(prepared)}). Add "
                    f"one to its original files, then prepare it again: {prepare_command(self.config)}"
                )
        n_train = self.dataset.num_examples(names["train"])
        out = {s: (names[s], np.arange(self.dataset.num_examples(names[s]))) for s in names}
        if "validation" not in names:
            n_val = round(self.config.validation_fraction * n_train)
            out["validation"] = (names["train"], np.arange(n_val))
            out["train"] = (names["train"], np.arange(n_val, n_train))
        return {s: out[s] for s in SPLITS}

    def _source(self, tfds_split: str) -> SplitSource:
        if tfds_split not in self._sources:
            # Images stay encoded here and are decoded with PIL in the (parallel) transforms.
            self._sources[tfds_split] = self.dataset.open_split(tfds_split)
        return self._sources[tfds_split]

    def decode(self, encoded: bytes) -> np.ndarray:
        """PNG / JPEG bytes -> uint8 ``(H, W, C)`` with the data set's channel count."""
        with Image.open(io.BytesIO(encoded)) as img:
            mode = "L" if self._channels == 1 else "RGB"
            out = np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
        return out[..., None] if out.ndim == 2 else out

    def _native_shape(self) -> tuple[int, int, int]:
        shape = self.dataset.image_shape
        self._channels = shape[-1]
        if all(d is not None for d in shape):
            return tuple(shape)
        split, ix = self._indices["train"]
        return tuple(self.decode(self._source(split)[int(ix[0])]["image"]).shape)

    def split_record_indices(self, split: str) -> tuple[str, np.ndarray]:
        """(tfds split, record indices) making up ``split`` (validation carved from train if needed)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return self._indices[split]

    # -- per-example and per-batch transforms ----------------------------------------------------------
    def _size(self) -> int:
        return self.image_shape[0]

    def eval_image(self, image: np.ndarray) -> np.ndarray:
        if self._eval_center_crop:
            return augment_host.resize_center_crop(image, self._size())
        return augment_host.resize(image, self._size())

    def augments_on_host(self) -> bool:
        """Whether train examples are augmented here (else on the device, or not at all)."""
        return self.config.augment_on == "host" and self.policy != "none"

    def _train_example(self, ex: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        image = self.decode(ex["image"])
        if self.augments_on_host():
            image = get_policy(self.policy).host(image, rng, self._size())
        else:
            image = self.eval_image(image)
        return {"image": image, "label": ex["label"]}

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``(..., H, W, C)`` -> float32 ``(x / 255 - mean) / std``."""
        return ((images.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)

    def _finish(self, examples: list[dict[str, Any]], per_device: int) -> dict[str, np.ndarray]:
        shape = (self.local_device_count, per_device)
        images = np.stack([e["image"] for e in examples])
        batch = {
            "image": self.normalize(images).reshape(*shape, *self.image_shape),
            "label": np.asarray([e["label"] for e in examples], np.int32).reshape(shape),
        }
        if "mask" in examples[0]:
            batch["mask"] = np.asarray([e["mask"] for e in examples], bool).reshape(shape)
        return batch

    def _read_options(self) -> grain.ReadOptions:
        return grain.ReadOptions(
            num_threads=self.config.num_threads, prefetch_buffer_size=self.config.prefetch
        )

    def _maybe_workers(self, ds: grain.IterDataset) -> grain.IterDataset:
        if self.config.num_workers:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain workers read absl flags (plain scripts, pytest)
                flags.FLAGS.mark_as_parsed()
            return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.config.num_workers))
        return ds

    # -- train ---------------------------------------------------------------------------------------
    def train_records(self, seed_offset: int = 0) -> _TrainRecords:
        """This process's train stream as positions -> records (``record_index`` gives the tfds index)."""
        split, indices = self._indices["train"]
        per_epoch = self.steps_per_epoch * self.global_batch_size // self.process_count
        return _TrainRecords(
            self._source(split), indices, per_epoch, self.process_index, self.config.seed + seed_offset
        )

    def _train_batch(self, records: _TrainRecords, seed: int, step: int) -> dict[str, np.ndarray]:
        per_process = self.global_batch_size // self.process_count
        positions = range(step * per_process, (step + 1) * per_process)
        augment = self.augments_on_host()
        examples = [
            self._train_example(rec, example_rng(seed, p) if augment else None)
            for rec, p in zip(records.read(positions), positions, strict=True)
        ]
        return self._finish(examples, self.per_device_batch_size)

    def _train_iter(self, seed_offset: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        records = self.train_records(seed_offset)
        batch = functools.partial(self._train_batch, records, self.config.seed + seed_offset)
        ds = grain.MapDataset.range(start_step, self.steps_per_epoch * _MAX_EPOCHS).map(batch)
        return iter(self._maybe_workers(ds.to_iter_dataset(self._read_options())))

    def train_iterator(self, seed_offset: int = 0) -> TrainIterator:
        """Infinite train batches ``{'image': (local_devices, per_device_batch, H, W, C) float32,
        'label': (local_devices, per_device_batch) int32}`` for this process."""
        return TrainIterator(self, seed_offset)

    # -- eval ----------------------------------------------------------------------------------------
    def eval_shard(self, split: str) -> tuple[np.ndarray, int]:
        """(record indices of this process's shard of ``split``, eval steps: the same on every process)."""
        tfds_split, indices = self.split_record_indices(split)
        shard = np.array_split(indices, self.process_count)[self.process_index]
        per_process = self.config.eval_batch_size // self.process_count
        steps = math.ceil(math.ceil(len(indices) / self.process_count) / per_process)
        return shard, steps

    def eval_batches(self, split: str = "test") -> Iterator[dict[str, np.ndarray]]:
        """Every example of ``split`` exactly once (over all processes); the last batches are padded and
        ``mask`` (bool, ``(local_devices, per_device_eval_batch)``) marks the real examples."""
        tfds_split, _ = self.split_record_indices(split)
        shard, steps = self.eval_shard(split)
        batch = functools.partial(self._eval_batch, self._source(tfds_split), shard)
        return iter(grain.MapDataset.range(steps).map(batch).to_iter_dataset(self._read_options()))

    def _eval_batch(self, source, shard: np.ndarray, step: int) -> dict[str, np.ndarray]:
        per_process = self.config.eval_batch_size // self.process_count
        indices = shard[step * per_process : (step + 1) * per_process]
        records = source.__getitems__(indices.tolist()) if len(indices) else []
        examples = [
            {"image": self.eval_image(self.decode(r["image"])), "label": r["label"], "mask": True}
            for r in records
        ]
        pad = {"image": np.zeros(self.image_shape, np.uint8), "label": 0, "mask": False}
        return self._finish(examples + [pad] * (per_process - len(examples)), self.per_device_eval_batch_size)

    def device_split(self, split: str = "train", normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``split`` (all processes' examples, in split order): images ``(N, H, W, C)``, float32
        normalised (or the uint8 pixels with ``normalize=False``), and int32 labels ``(N,)``; no
        augmentation (apply ``device_augment`` per step). Read in chunks, decoded by ``num_threads``
        threads."""
        tfds_split, indices = self.split_record_indices(split)
        source = self._source(tfds_split)

        def load(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            records = source.__getitems__(chunk.tolist())
            images = [self.eval_image(self.decode(r["image"])) for r in records]
            return np.stack(images), np.asarray([r["label"] for r in records], np.int32)

        if len(indices) == 0:
            images, labels = np.zeros((0, *self.image_shape), np.uint8), np.zeros((0,), np.int32)
        else:
            chunks = np.array_split(indices, math.ceil(len(indices) / 1000))
            with ThreadPoolExecutor(max(1, self.config.num_threads)) as pool:
                parts = list(pool.map(load, chunks))
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
        return (self.normalize(images) if normalize else images), labels

    def labels(self, split: str) -> np.ndarray:
        """int32 labels ``(N,)`` of the whole ``split`` in split order (images are not decoded)."""
        tfds_split, indices = self.split_record_indices(split)
        source = self._source(tfds_split)
        chunks = [
            source.__getitems__(c.tolist()) for c in np.array_split(indices, max(1, len(indices) // 5000))
        ]
        return np.asarray([r["label"] for chunk in chunks for r in chunk], np.int32)


def create_input_pipeline(
    data_config: ml_collections.ConfigDict | Mapping[str, Any],
    *,
    local_device_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> InputPipeline:
    """Build the input pipeline of ``data_config`` (see :func:`default_data_config`) for this process.

    Device and process counts default to ``jax.local_device_count()``, ``jax.process_index()`` and
    ``jax.process_count()``. The data set is prepared first if needed (``data.prepare``).
    """
    return InputPipeline(
        data_config,
        jax.local_device_count() if local_device_count is None else local_device_count,
        jax.process_index() if process_index is None else process_index,
        jax.process_count() if process_count is None else process_count,
    )
