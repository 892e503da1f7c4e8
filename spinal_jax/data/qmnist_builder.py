"""A TensorFlow-free tfds builder for QMNIST (https://github.com/facebookresearch/qmnist).

The manual dir holds the four files of the official release:

* ``qmnist-train-images-idx3-ubyte.gz``, ``qmnist-test-images-idx3-ubyte.gz``: IDX3 uint8 images, header
  magic 2051 (``0x00000803``), N, 28, 28 (big-endian int32), then ``N * 784`` pixels, 0 = background;
* ``qmnist-train-labels-idx2-int.gz``, ``qmnist-test-labels-idx2-int.gz``: IDX2 big-endian int32, header
  magic 3074 (``0x00000C02``), N, 8, then ``N x 8`` values. Column 0 is the digit class; the other columns
  are NIST metadata (NIST HSF series, writer id, digit index, ...), not stored here.

Splits: ``train`` (60,000 examples) and ``test`` (all 60,000 examples of the QMNIST test file). The first
10,000 test examples ("test10k") are the reconstructions of MNIST's test set, the other 50,000 ("test50k")
the MNIST test digits that MNIST left out; results on ``test`` are therefore on 60,000 images, not on the
10,000 of MNIST's test set. Images are stored as PNG bytes encoded with PIL (no TensorFlow at any point).
"""

from __future__ import annotations

import functools
import gzip
import io
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spinal_jax.data.kinds import Config, DatasetKind

# The official release names, under which the four files are expected in the manual dir.
QMNIST_FILES = (
    "qmnist-train-images-idx3-ubyte.gz",
    "qmnist-train-labels-idx2-int.gz",
    "qmnist-test-images-idx3-ubyte.gz",
    "qmnist-test-labels-idx2-int.gz",
)
IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 3074  # 0x00000C02: int32, 2 dimensions
LABEL_COLUMNS = 8
SPLIT_FILES = {
    "train": (QMNIST_FILES[0], QMNIST_FILES[1]),
    "test": (QMNIST_FILES[2], QMNIST_FILES[3]),
}


class QmnistFileError(ValueError):
    """A QMNIST file is not in the official format; the message names the file."""


def _read(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise QmnistFileError(f"qmnist: {path} is not a readable gzip file ({err}).") from err


def _header(path: Path, data: bytes, magic: int, ndim: int, what: str) -> np.ndarray:
    if len(data) < 4 * (ndim + 1):
        raise QmnistFileError(f"qmnist: {path} is too short ({len(data)} bytes) for an {what} header.")
    header = np.frombuffer(data, ">i4", count=ndim + 1)
    if int(header[0]) != magic:
        raise QmnistFileError(
            f"qmnist: {path} has magic number {int(header[0])} (0x{int(header[0]) & 0xFFFFFFFF:08X}), "
            f"expected {magic} (0x{magic:08X}, {what}); is it the right file of the official QMNIST release?"
        )
    return header[1:]


def read_images(path: Path) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` from a gzipped IDX3 file (magic 2051), checking the header against the data."""
    data = _read(path)
    n, rows, cols = (int(d) for d in _header(path, data, IMAGES_MAGIC, 3, "IDX3 uint8 image"))
    if (rows, cols) != (28, 28):
        raise QmnistFileError(f"qmnist: {path} holds {rows}x{cols} images; QMNIST images are 28x28.")
    if len(data) - 16 != n * rows * cols:
        raise QmnistFileError(
            f"qmnist: {path} declares {n} images ({n * rows * cols} pixel bytes) but holds "
            f"{len(data) - 16} pixel bytes; the file is truncated or corrupt."
        )
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def read_labels(path: Path) -> np.ndarray:
    """int32 ``(N, 8)`` from a gzipped IDX2 int file (magic 3074); column 0 is the class, checked in 0-9."""
    data = _read(path)
    n, cols = (int(d) for d in _header(path, data, LABELS_MAGIC, 2, "IDX2 int32 label"))
    if cols != LABEL_COLUMNS:
        raise QmnistFileError(
            f"qmnist: {path} has {cols} label columns; QMNIST label files have {LABEL_COLUMNS}."
        )
    if len(data) - 12 != 4 * n * cols:
        raise QmnistFileError(
            f"qmnist: {path} declares {n} rows of {cols} int32 ({4 * n * cols} bytes) but holds "
            f"{len(data) - 12} bytes after the header; the file is truncated or corrupt."
        )
    labels = np.frombuffer(data, ">i4", offset=12).reshape(n, cols).astype(np.int32)
    bad = np.flatnonzero((labels[:, 0] < 0) | (labels[:, 0] > 9))
    if len(bad):
        raise QmnistFileError(
            f"qmnist: {path} row {int(bad[0])} has class {int(labels[bad[0], 0])} in column 0; "
            f"classes are 0-9."
        )
    return labels


def read_split(manual: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(N, 28, 28)``, labels int32 ``(N, 8)``) of 'train' or 'test', counts checked."""
    image_file, label_file = SPLIT_FILES[split]
    images, labels = read_images(manual / image_file), read_labels(manual / label_file)
    if len(images) != len(labels):
        raise QmnistFileError(
            f"qmnist: {manual / image_file} holds {len(images)} images but {manual / label_file} holds "
            f"{len(labels)} labels; the two files of the {split!r} split must have the same count."
        )
    return images, labels


def check_files(manual: Path) -> None:
    """Parse all four files (a QmnistFileError naming the file on any format or count problem)."""
    for split in SPLIT_FILES:
        read_split(manual, split)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``(28, 28)`` -> PNG bytes (8-bit greyscale), with PIL."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def qmnist_builder(tfds: types.ModuleType) -> type:
    """The tfds builder class ``Qmnist``, defined on first use with the ``tfds`` module that
    ``spinal_jax.data.tfds_builders`` imports to prepare (this module imports no tfds)."""

    class Qmnist(tfds.core.GeneratorBasedBuilder):
        """QMNIST digits: 'train' (60,000) and 'test' (60,000: test10k, the MNIST test set, then test50k)."""

        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Put the official QMNIST release files {', '.join(QMNIST_FILES)} in the manual dir "
            "(https://github.com/facebookresearch/qmnist)."
        )

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                        "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://github.com/facebookresearch/qmnist",
            )

        def _split_generators(self, dl_manager: tfds.download.DownloadManager):
            manual = Path(dl_manager.manual_dir)
            return {split: self._generate_examples(manual, split) for split in SPLIT_FILES}

        def _generate_examples(self, manual: Path, split: str):
            images, labels = read_split(manual, split)
            for i in range(len(images)):
                # bytes are stored as they are: no TensorFlow encoder is involved.
                yield f"{split}_{i}", {"image": encode_png(images[i]), "label": int(labels[i, 0])}

    return Qmnist


def _make_builder(tfds: types.ModuleType, spec: Any, config: Config, data_dir: str, manual: Path) -> Any:
    del spec, config, manual  # one builder, no builder configs; the manual dir is given at prepare
    return qmnist_builder(tfds)(data_dir=data_dir, file_format="array_record")


KIND = DatasetKind("qmnist", _make_builder, check_contents=check_files)
