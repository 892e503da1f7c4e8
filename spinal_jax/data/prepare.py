"""Find or prepare a data set in tfds ArrayRecord format, with one clear error when files are missing.

Finding a prepared data set imports neither tfds nor TensorFlow (``spinal_jax.data.records`` reads it).
Preparing one goes through ``spinal_jax.data.tfds_builders``, imported only then; stock tfds builders
(mnist, cifar10, ...) also need TensorFlow to prepare, our own builders (QMNIST, Quick Draw, image
folders) do not. What differs between data sets is in their ``DatasetKind`` (``kinds.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import ml_collections

from spinal_jax.data.catalog import DatasetSpec, get_dataset_spec
from spinal_jax.data.config import resolve_data_dir, resolve_manual_dir
from spinal_jax.data.errors import DataPreparationError
from spinal_jax.data.records import PreparedDataset, find_version, read_prepared

__all__ = ["DataPreparationError", "check_manual_files", "dataset_dir", "prepare_command", "prepare_dataset"]


def dataset_dir(config: ml_collections.ConfigDict) -> Path:
    """``<data_dir>/<builder>[/<builder config>]``, the folder of the prepared versions of ``config.name``
    (the tfds builder's ``data_dir`` without its version; found without importing tfds)."""
    spec = get_dataset_spec(config.name)
    root = resolve_data_dir(config) / spec.tfds_name
    if spec.kind.subfolder:
        return root / spec.kind.subfolder(config, resolve_manual_dir(config))
    return root


def expected_files(config: ml_collections.ConfigDict, spec: DatasetSpec) -> tuple[str, ...]:
    """The original file names the manual dir must hold for ``config``."""
    return spec.kind.files(config, spec)


def prepare_command(config: ml_collections.ConfigDict) -> str:
    """The shell command that prepares ``config``'s data set afresh (replacing a prepared copy)."""
    spec = get_dataset_spec(config.name)
    fields = [
        f"name={config.name}",
        f"data_dir={resolve_data_dir(config)}",
        f"manual_dir={resolve_manual_dir(config)}",
    ]
    for key in spec.kind.config_fields:
        value = config[key]
        fields.append(f"{key}={','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(["python -m spinal_jax.data --replace", *map(shlex.quote, fields)])


def _missing_message(
    config: ml_collections.ConfigDict, spec: DatasetSpec, manual: Path, missing: Sequence[str]
) -> str:
    if manual.is_dir():
        problem = f"its original files are missing: {', '.join(missing)}"
    else:
        problem = f"the folder of its original files, {manual}, does not exist"
    return (
        f"Data set {config.name!r} is not prepared in {resolve_data_dir(config)} and {problem}. Put "
        f"{spec.kind.wanted(config, spec)} in {manual} (or set data.manual_dir to the folder holding them; "
        f"source: {spec.source}), then run again with data.prepare=True."
    )


def check_manual_files(config: ml_collections.ConfigDict, spec: DatasetSpec, manual: Path) -> None:
    """Raise :class:`DataPreparationError` unless the manual dir holds every original file, each in the
    format the kind's ``check_contents`` expects."""
    missing = spec.kind.missing(config, spec, manual)
    if missing:
        raise DataPreparationError(_missing_message(config, spec, manual, missing))
    if spec.kind.check_contents:
        try:
            spec.kind.check_contents(manual)
        except ValueError as err:
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


def _read(version: Path, config: ml_collections.ConfigDict) -> PreparedDataset:
    return read_prepared(version, repair=prepare_command(config))


def prepare_dataset(config: ml_collections.ConfigDict, replace: bool = False) -> PreparedDataset:
    """The prepared data set ``config.name`` (its newest prepared version), prepared from the manual dir
    first if there is none; ``replace=True`` deletes that version and prepares it again.

    Safe to call from several processes at once: one prepares, the others wait for it."""
    if not replace and (version := find_version(dataset_dir(config))):
        return _read(version, config)
    if not config.prepare:  # before the lock: a read-only data folder gets this message, not EACCES
        raise DataPreparationError(
            f"Data set {config.name!r} is not prepared in {resolve_data_dir(config)} and data.prepare=False. "
            f"Set data.prepare=True (original files expected in {resolve_manual_dir(config)}) or point "
            f"data.data_dir at a prepared copy."
        )
    with _preparation_lock(config):
        version = find_version(dataset_dir(config))
        if version and replace:
            shutil.rmtree(version)
        elif version:  # prepared by another process while this one waited
            return _read(version, config)
        from spinal_jax.data.tfds_builders import prepare_with_tfds  # tfds, only to prepare

        return _read(prepare_with_tfds(config), config)
