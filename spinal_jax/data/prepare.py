"""Find or prepare a data set in tfds ArrayRecord format, with one clear error when files are missing.

Finding a prepared data set imports neither tfds nor TensorFlow (``spinal_jax.data.records`` reads it).
Preparing one imports tfds, lazily, and only then; stock tfds builders (mnist, cifar10, ...) also need
TensorFlow to prepare, our own builders (QMNIST, Quick Draw, image folders) do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections

from spinal_jax.data.catalog import DatasetSpec, get_dataset_spec
from spinal_jax.data.config import resolve_data_dir, resolve_manual_dir
from spinal_jax.data.records import PreparedDataset, find_version, read_prepared

DatasetBuilder = Any  # a tfds DatasetBuilder (tfds is imported by _import_tfds_to_prepare only)


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


def _import_tfds_to_prepare() -> Any:
    """The ``tensorflow_datasets`` module, imported here only, lazily, to prepare a data set (reading a
    prepared one goes through ``spinal_jax.data.records`` and never imports it)."""
    import tensorflow_datasets

    return tensorflow_datasets


def make_builder(config: ml_collections.ConfigDict) -> DatasetBuilder:
    """The tfds builder of ``config.name`` over ``data_dir`` (prepared or not), to prepare it."""
    tfds = _import_tfds_to_prepare()
    spec = get_dataset_spec(config.name)
    data_dir = str(resolve_data_dir(config))
    if spec.kind == "quickdraw":
        from spinal_jax.data.quickdraw_builder import quickdraw_classes

        quickdraw = quickdraw_classes(tfds)
        QuickdrawSubset = quickdraw.Builder  # noqa: N806
        cfg = quickdraw.make_config(
            tuple(config.classes), config.per_class_cap, config.validation_per_class, config.test_per_class
        )
        # tfds refuses a custom config equal to a predefined one: pass the predefined one by name.
        predefined = {c.name for c in QuickdrawSubset.BUILDER_CONFIGS}
        config_arg = cfg.name if cfg.name in predefined else cfg
        return QuickdrawSubset(config=config_arg, data_dir=data_dir, file_format="array_record")
    if spec.kind == "qmnist":
        from spinal_jax.data.qmnist_builder import qmnist_builder

        return qmnist_builder(tfds)(data_dir=data_dir, file_format="array_record")
    if spec.kind == "image_folder":
        from spinal_jax.data.image_folder_builder import config_name, image_folder_classes

        root = resolve_manual_dir(config).resolve()
        image_folder = image_folder_classes(tfds)
        cfg = image_folder.Config(name=config_name(root), root=str(root))
        return image_folder.Builder(config=cfg, data_dir=data_dir, file_format="array_record")
    return tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")


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
        return read_prepared(_prepare(config))


def _prepare(config: ml_collections.ConfigDict) -> Path:
    """Prepare ``config.name`` with its tfds builder; returns the version folder written."""
    spec = get_dataset_spec(config.name)
    manual = resolve_manual_dir(config)
    check_manual_files(config, spec, manual)
    tfds = _import_tfds_to_prepare()
    builder = make_builder(config)
    if spec.kind == "stock" and importlib.util.find_spec("tensorflow") is None:
        raise DataPreparationError(
            f"Preparing the stock tfds data set {config.name!r} needs TensorFlow: pip install "
            f"'spinal_jax[prepare]' on a machine with it, prepare there, then copy"
            f" {resolve_data_dir(config)} here. Training itself does not need TensorFlow."
        )
    if spec.kind == "stock":
        check_checksums(config, builder, manual)
    tfds.disable_progress_bar()
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    except tfds.download.NonMatchingChecksumError as err:
        raise DataPreparationError(
            f"Data set {config.name!r}: a file in {manual} has the wrong size or checksum (tfds: {err}). "
            f"Replace it with the original release file ({', '.join(expected_files(config, spec))}; "
            f"source: {spec.source})."
        ) from err
    return Path(builder.data_dir)
