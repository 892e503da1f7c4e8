"""The data config: every field with its default, validation, and path resolution."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from spinal_jax.data.catalog import DATASETS, get_dataset_spec
from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.policies import device_policy, get_policy
from spinal_jax.data.quickdraw_builder import DEFAULT_CLASSES as QUICKDRAW_SHARED_CLASSES


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field with its default; empty strings / tuples and 0 mean "the data set's reference"."""
    c = ml_collections.ConfigDict()
    c.name = "mnist"
    c.data_dir = ""  # prepared tfds data; '' -> $SPINAL_TFDS_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = (
        ""  # original files; '' -> <shared>/data/<folder> where one exists, else <data_dir>/downloads/manual
    )
    c.batch_size = 128  # global train batch, over all devices of all processes
    c.eval_batch_size = 1000  # global eval batch
    c.validation_fraction = 0.1  # carved from train where the data set has no validation split
    c.augment = "reference"  # 'reference' | 'none'
    c.augment_policy = ""  # '' -> the data set's reference policy; else a name in policies.POLICIES
    c.augment_on = "host"  # 'host' (grain workers) | 'device' (pipe.device_augment inside the train step)
    # Accelerators: load every split onto the devices once and train whole epochs as one compiled scan
    # (spinal_jax.resident); needs augment_on='device'. Slow on CPUs: keep False there.
    c.device_resident = False
    c.seed = 0
    # Mixup / CutMix inside the train step, on the device (spinal_jax.mixup; timm's Mixup): 0 disables each.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.mix_switch_prob = 0.5  # both > 0: probability of CutMix for an example (else Mixup)
    c.mix_prob = 1.0  # probability that an example (or the batch) is mixed at all
    c.mix_mode = "elem"  # 'elem': lambda, kind and box per example; 'batch': one for the whole batch
    c.image_size = 0  # 0 -> native size (ImageNet: 224); else train crops / eval resizes to this square size
    c.mean = ()  # per-channel mean of [0, 1] images; () -> the data set's reference value
    c.std = ()
    c.classes = QUICKDRAW_SHARED_CLASSES  # quickdraw: class files <class>.npy to use, in label order
    c.per_class_cap = 0  # quickdraw: use at most this many rows per class (0: all)
    c.validation_per_class = 250  # quickdraw: held-out rows per class for validation
    c.test_per_class = 500  # quickdraw: held-out rows per class for test
    c.num_workers = 0  # grain worker processes (0: read and augment in threads of this process)
    c.num_threads = 4  # grain reader threads per process (or per worker)
    c.prefetch = 8  # batches prefetched by the train and eval iterators (>= num_threads)
    c.prepare = True  # prepare the tfds data set when not yet prepared
    return c


_CHOICES = {"augment": ("reference", "none"), "augment_on": ("host", "device"), "mix_mode": ("elem", "batch")}


def shared_dir() -> Path:
    """``$SPINAL_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("SPINAL_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared"


def validate_data_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Return a complete, checked copy of ``config``; a ``DataConfigError`` (a ValueError) names the first
    unknown field or bad value and what to use instead."""
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    c = default_data_config()
    for key, value in given.items():
        if key not in c:
            raise DataConfigError(f"data.{key}: unknown data config field; known fields: {sorted(c.keys())}.")
        try:
            c[key] = tuple(value) if isinstance(value, list) else value
        except TypeError as err:
            raise DataConfigError(f"data.{key}: {value!r} has the wrong type ({err}).") from err
    spec = get_dataset_spec(c.name)
    _check_choices(c)
    _check_numbers(c)
    if spec.kind.check_config:
        spec.kind.check_config(c)
    return c


def _check_choices(c: ml_collections.ConfigDict) -> None:
    for key, choices in _CHOICES.items():
        if c[key] not in choices:
            raise DataConfigError(f"data.{key}: {c[key]!r} is not one of {choices}.")
    if not isinstance(c.device_resident, bool):
        raise DataConfigError(f"data.device_resident: must be True or False, got {c.device_resident!r}.")
    if c.device_resident and c.augment_on != "device":
        raise DataConfigError(
            f"data.device_resident=True keeps the data on the devices, so augmentation must run there too: "
            f"set data.augment_on='device' (got {c.augment_on!r})."
        )
    if c.augment_policy:
        get_policy(c.augment_policy)
    if c.augment_on == "device" and c.augment == "reference":
        device_policy(effective_policy(c))


def _check_numbers(c: ml_collections.ConfigDict) -> None:
    for key in ("batch_size", "eval_batch_size"):
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
            raise DataConfigError(f"data.{key}: must be a positive integer, got {c[key]!r}.")
    if not 0.0 <= c.validation_fraction < 1.0:
        raise DataConfigError(f"data.validation_fraction: must be in [0, 1), got {c.validation_fraction}.")
    for key in ("image_size", "per_class_cap", "num_workers", "validation_per_class", "test_per_class"):
        if c[key] < 0:
            raise DataConfigError(f"data.{key}: must be >= 0, got {c[key]}.")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if c[key] < 0:
            raise DataConfigError(f"data.{key}: must be >= 0 (0 disables it), got {c[key]}.")
    for key in ("mix_switch_prob", "mix_prob"):
        if not 0.0 <= c[key] <= 1.0:
            raise DataConfigError(f"data.{key}: must be in [0, 1], got {c[key]}.")
    if len(c.mean) != len(c.std):
        raise DataConfigError(
            f"data.mean / data.std: give both or neither, with one value per channel "
            f"(got {len(c.mean)} and {len(c.std)} values)."
        )
    if any(s <= 0 for s in c.std):
        raise DataConfigError(f"data.std: every value must be > 0, got {c.std}.")


def effective_policy(config: ml_collections.ConfigDict) -> str:
    """The augmentation policy the train examples get: ``'none'`` when ``augment='none'``, else
    ``augment_policy`` or, when that is empty, the data set's reference policy."""
    if config.augment != "reference":
        return "none"
    return config.augment_policy or get_dataset_spec(config.name).policy


def resolve_data_dir(config: ml_collections.ConfigDict) -> Path:
    """Where prepared tfds data sets live."""
    if config.data_dir:
        return Path(config.data_dir).expanduser()
    env = os.environ.get("SPINAL_TFDS_DIR") or os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path("~/tensorflow_datasets").expanduser()


def resolve_manual_dir(config: ml_collections.ConfigDict) -> Path:
    """Where the original files of the data set are expected."""
    if config.manual_dir:
        return Path(config.manual_dir).expanduser()
    folder = get_dataset_spec(config.name).shared_folder
    if folder:
        return shared_dir() / "data" / folder
    return resolve_data_dir(config) / "downloads" / "manual" / config.name.replace("/", "_")


def known_dataset_names() -> list[str]:
    """Every ``data.name`` value, sorted."""
    return sorted(DATASETS)
