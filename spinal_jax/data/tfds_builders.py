"""The tfds side of data preparation (offline, never on the training path): the tfds builder of each
data set, the checksum check of manual files, and ``download_and_prepare``.

Imported only by ``prepare.prepare_dataset`` when a set must be prepared, and by tests that want tfds's
own reader as an independent reference. ``tensorflow_datasets`` is imported in ``_import_tfds`` only;
the builder modules (QMNIST, Quick Draw, image folders) receive it as an argument.
"""

from __future__ import annotations

import hashlib
import importlib.util
import types
from pathlib import Path
from typing import Any

import ml_collections

from spinal_jax.data.catalog import get_dataset_spec
from spinal_jax.data.config import resolve_data_dir, resolve_manual_dir
from spinal_jax.data.prepare import DataPreparationError, check_manual_files, expected_files

DatasetBuilder = Any  # a tfds DatasetBuilder


def _import_tfds() -> Any:
    """The ``tensorflow_datasets`` module, imported here only, lazily, to prepare a data set (reading a
    prepared one goes through ``spinal_jax.data.records`` and never imports it)."""
    import tensorflow_datasets

    return tensorflow_datasets


def make_builder(config: ml_collections.ConfigDict) -> DatasetBuilder:
    """The tfds builder of ``config.name`` over ``data_dir`` (prepared or not), to prepare it."""
    tfds = _import_tfds()
    spec = get_dataset_spec(config.name)
    data_dir = str(resolve_data_dir(config))
    return spec.kind.make_builder(tfds, spec, config, data_dir, resolve_manual_dir(config))


def checksum_errors(tfds: types.ModuleType) -> tuple[type[Exception], ...]:
    """The exception classes tfds raises for a file whose size or checksum differs from the registered
    one: ``NonMatchingChecksumError``, which tfds 4.9 defines in ``core.download.download_manager`` and
    older releases also exported as ``tfds.download.NonMatchingChecksumError`` (empty if neither)."""
    found = []
    for owner in ("download", "core.download.download_manager"):
        module: Any = tfds
        for part in owner.split("."):
            module = getattr(module, part, None)
        error = getattr(module, "NonMatchingChecksumError", None)
        if isinstance(error, type) and issubclass(error, Exception) and error not in found:
            found.append(error)
    return tuple(found)


_HASH_LIMIT = 4 << 30  # sha256 files up to 4 GiB; larger ones (ImageNet) are checked by size only


def check_checksums(config: ml_collections.ConfigDict, builder: DatasetBuilder, manual: Path) -> None:
    """Compare size and sha256 of each manual file with the checksums tfds registers for the builder.

    tfds itself does not verify files taken from a manual dir, so a truncated or different file would
    silently give a different data set.
    """
    spec = get_dataset_spec(config.name)
    for url, info in (type(builder).url_infos or {}).items():
        name = info.filename or url.rsplit("/", 1)[-1]
        path = manual / name
        if not path.exists():
            continue
        size = path.stat().st_size
        bad = info.size is not None and size != int(info.size)
        if not bad and info.checksum and size <= _HASH_LIMIT:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            bad = digest.hexdigest() != info.checksum
        if bad:
            raise DataPreparationError(
                f"Data set {config.name!r}: {path} has the wrong size or checksum (expected {int(info.size)} "
                f"bytes, sha256 {info.checksum}). Replace it with the original release file {name!r} "
                f"(source: {spec.source})."
            )


def prepare_with_tfds(config: ml_collections.ConfigDict) -> Path:
    """Prepare ``config.name`` with its tfds builder; returns the version folder written."""
    spec = get_dataset_spec(config.name)
    manual = resolve_manual_dir(config)
    check_manual_files(config, spec, manual)
    tfds = _import_tfds()
    builder = make_builder(config)
    if spec.kind.needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        raise DataPreparationError(
            f"Preparing the stock tfds data set {config.name!r} needs TensorFlow: pip install "
            f"'spinal_jax[prepare]' on a machine with it, prepare there, then copy"
            f" {resolve_data_dir(config)} here. Training itself does not need TensorFlow."
        )
    if spec.kind.tfds_checksums:
        check_checksums(config, builder, manual)
    tfds.disable_progress_bar()
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    except checksum_errors(tfds) as err:  # only these: anything else (Ctrl-C too) propagates as it is
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataPreparationError(
            f"Data set {config.name!r}: a file in {manual} has the wrong size or checksum (tfds: {detail}). "
            f"Replace it with the original release file ({', '.join(expected_files(config, spec))}; "
            f"source: {spec.source})."
        ) from err
    return Path(builder.data_dir)
