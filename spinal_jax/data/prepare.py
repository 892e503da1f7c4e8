"""Find or prepare a data set in tfds ArrayRecord format, with one clear error when files are missing.

Finding a prepared data set imports neither tfds nor TensorFlow (``spinal_jax.data.records`` reads it).
Preparing one goes through ``spinal_jax.data.tfds_builders``, imported only then; stock tfds builders
(mnist, cifar10, ...) also need TensorFlow to prepare, our own builders (QMNIST, Quick Draw, image
folders) do not.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from spinal_jax.data.catalog import DatasetSpec, get_dataset_spec
from spinal_jax.data.config import resolve_data_dir, resolve_manual_dir
from spinal_jax.data.records import PreparedDataset, find_version, read_prepared


class DataPreparationError(ValueError):
    """A data set cannot be found or prepared; the message names the files and where to put them."""


def dataset_dir(config: ml_collections.ConfigDict) -> Path:
    """``<data_dir>/<builder>[/<builder config>]``, the folder of the prepared versions of ``config.name``
    (the tfds builder's ``data_dir`` without its version; found without importing tfds)."""
    spec = get_dataset_spec(config.name)
    root = resolve_data_dir(config) / spec.tfds_name
    if spec.kind == "quickdraw":
        from spinal_jax.data.quickdraw_builder import config_name

        return root / config_name(
            tuple(config.classes), config.per_class_cap, config.validation_per_class, config.test_per_class
        )
    if spec.kind == "image_folder":
        from spinal_jax.data.image_folder_builder import config_name

        return root / config_name(resolve_manual_dir(config))
    return root


def expected_files(config: ml_collections.ConfigDict, spec: DatasetSpec) -> tuple[str, ...]:
    if spec.kind == "quickdraw":
        return tuple(f"{c}.npy" for c in config.classes)
    return spec.manual_files


def _missing_message(config: ml_collections.ConfigDict, spec: DatasetSpec, manual: Path, missing) -> str:
    if spec.kind == "image_folder":
        what = "a train/<class>/*.jpg and test/<class>/*.jpg tree, or .tar.gz archives of such trees"
    else:
        what = ", ".join(expected_files(config, spec))
    return (
        f"Data set {config.name!r} is not prepared in {resolve_data_dir(config)} and its original files are "
        f"missing: {', '.join(missing)}. Put {what} in {manual} (or set data.manual_dir to the folder holding"
        f" them; source: {spec.source}), then run again with data.prepare=True."
    )


def check_manual_files(config: ml_collections.ConfigDict, spec: DatasetSpec, manual: Path) -> None:
    """Raise :class:`DataPreparationError` unless the manual dir holds every original file."""
    if spec.kind == "image_folder":
        from spinal_jax.data.image_folder_builder import scan

        if not manual.is_dir() or "train" not in scan(manual):
            raise DataPreparationError(_missing_message(config, spec, manual, [f"{manual}/train/<class>/*"]))
        return
    missing = [f for f in expected_files(config, spec) if not (manual / f).exists()]
    if missing:
        raise DataPreparationError(_missing_message(config, spec, manual, missing))
    if spec.kind == "qmnist":
        from spinal_jax.data.qmnist_builder import QmnistFileError, check_files

        try:
            check_files(manual)
        except QmnistFileError as err:
            raise DataPreparationError(
                f"Data set {config.name!r}: {err} Replace it with the original release file (source: "
                f"{spec.source})."
            ) from err


@contextlib.contextmanager
def _preparation_lock(config: ml_collections.ConfigDict) -> Iterator[None]:
    """Held while one process prepares ``config.name``: processes sharing a disk (the processes of a
    multi-process run, test workers) prepare it once; the others wait, then find it prepared."""
    data_dir = resolve_data_dir(config)
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".{config.name.replace('/', '_')}.prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_dataset(config: ml_collections.ConfigDict) -> PreparedDataset:
    """The prepared data set ``config.name`` (its newest prepared version), prepared from the manual dir
    first if there is none.

    Safe to call from several processes at once: one prepares, the others wait for it."""
    if version := find_version(dataset_dir(config)):
        return read_prepared(version)
    if not config.prepare:  # before the lock: a read-only data folder gets this message, not EACCES
        raise DataPreparationError(
            f"Data set {config.name!r} is not prepared in {resolve_data_dir(config)} and data.prepare=False. "
            f"Set data.prepare=True (original files expected in {resolve_manual_dir(config)}) or point "
            f"data.data_dir at a prepared copy."
        )
    with _preparation_lock(config):
        if version := find_version(dataset_dir(config)):  # prepared by another process while this one waited
            return read_prepared(version)
        from spinal_jax.data.tfds_builders import prepare_with_tfds  # tfds, only to prepare

        return read_prepared(prepare_with_tfds(config))
