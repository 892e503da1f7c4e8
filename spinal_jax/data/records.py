"""Read a data set that tfds prepared in ArrayRecord format, with neither tfds nor TensorFlow.

A prepared version folder ``<data_dir>/<builder>[/<config>]/<version>/`` holds ``dataset_info.json`` (split
names, shard lengths, file name template), ``features.json`` (image shape, number of classes), optionally
``label.labels.txt`` (class names) and the ArrayRecord shards, whose records are serialized
``tf.train.Example`` protos. This module reads them with ``array_record`` and a protobuf wire-format parser of
its own, so training and evaluation import neither TensorFlow nor tfds; only
preparation (``spinal_jax.data.tfds_builders``) does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource

from spinal_jax.data.errors import DataPreparationError

_DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


# -- tf.train.Example, protobuf wire format -------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field of one message: ints for varints, bytes otherwise."""
    out, pos, end = [], 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"not a tf.train.Example record: wire type {wire} at byte {pos}")
        out.append((number, wire, value))
    if pos != end:
        raise ValueError("not a tf.train.Example record: truncated")
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: bytes) -> list[bytes] | list[int] | np.ndarray:
    """The values of one ``tf.train.Feature``: a BytesList (1), FloatList (2) or Int64List (3)."""
    fields = _fields(feature)
    if not fields:  # no value list set
        return []
    kind, _, inner = fields[0]
    values = _fields(inner)
    if kind == 1:
        return [v for _, _, v in values]
    if kind == 2:  # packed (wire 2) or one fixed32 per value (wire 5)
        return np.frombuffer(b"".join(v for _, _, v in values), "<f4")
    ints: list[int] = []
    for _, wire, v in values:
        if wire == 0:
            ints.append(_signed(v))
        else:  # packed
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                ints.append(_signed(x))
    return ints


def parse_example(record: bytes) -> dict[str, list[bytes] | list[int] | np.ndarray]:
    """A serialized ``tf.train.Example`` -> ``{feature name: its list of values}``."""
    out: dict[str, Any] = {}
    for number, _, features in _fields(record):
        if number != 1:
            continue
        for _, _, entry in _fields(features):  # map<string, Feature> entries: key = 1, value = 2
            parts = {n: v for n, _, v in _fields(entry)}
            out[parts.get(1, b"").decode()] = _feature_values(parts.get(2, b""))
    return out


# -- prepared folders -----------------------------------------------------------------------------------
def _fix(folder: Path, repair: str, start: bool = True) -> str:
    """How to prepare a damaged copy again, as a clause (a sentence when ``start``): run ``repair`` (a
    command), or else delete ``folder`` and let the next run prepare it."""
    if repair:
        clause = f"prepare it again from the original files: {repair}"
    else:
        clause = f"delete {folder} and run again with data.prepare=True to prepare it from the original files"
    end = "" if repair else "."  # no full stop after a command: it would be copied with it
    return f"{clause[0].upper()}{clause[1:]}{end}" if start else f"{clause}{end}"


class SplitSource:
    """Random access to one split's records as ``{"image": encoded PNG / JPEG bytes, "label": int}``.

    A file that array_record cannot read (truncated, overwritten) or a record that is not an image
    classification example is a :class:`DataPreparationError` saying how to prepare the set again
    (``repair``: the command, else a sentence)."""

    def __init__(self, files: Sequence[Path], repair: str = ""):
        self._files = [str(f) for f in files]
        self._repair = repair
        try:
            self._source = ArrayRecordDataSource(self._files)
        except RuntimeError as err:  # array_record's C++ errors (Riegeli: hash mismatch, file too short)
            raise self._damaged(err) from err

    def _damaged(self, err: Exception, what: str = "cannot be read") -> DataPreparationError:
        files = self._files[0] if len(self._files) == 1 else f"one of {', '.join(self._files)}"
        detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        return DataPreparationError(
            f"The prepared data set in {Path(self._files[0]).parent} is damaged: {files} {what} ({detail}). "
            f"{_fix(Path(self._files[0]).parent, self._repair)}"
        )

    def __len__(self) -> int:
        return len(self._source)

    def _example(self, record: bytes) -> dict[str, Any]:
        try:
            ex = parse_example(record)
            return {"image": ex["image"][0], "label": ex["label"][0]}
        except (ValueError, KeyError, IndexError) as err:
            raise self._damaged(err, "holds a record that is not an image classification example") from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            record = self._source[index]
        except RuntimeError as err:
            raise self._damaged(err) from err
        return self._example(record)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """One bulk read (much cheaper per record than single reads), then one parse per record."""
        try:
            records = self._source.__getitems__(list(indices))
        except RuntimeError as err:
            raise self._damaged(err) from err
        return [self._example(r) for r in records]


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A prepared data set version folder and what its metadata says.

    Attributes:
      path: ``<data_dir>/<builder>[/<config>]/<version>``.
      shard_lengths: records per shard file, by split name (as prepared: 'train', 'test', ...).
      class_names: label names, index = label.
      image_shape: ``(H, W, C)``; ``H`` and ``W`` are None for images of varying size.
      repair: the command that prepares this set again, quoted in messages about damaged files ('' =
        say it in words).
    """

    path: Path
    shard_lengths: dict[str, tuple[int, ...]]
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    _name: str
    _template: dict[str, str]
    repair: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        """The prepared split names."""
        return tuple(self.shard_lengths)

    def num_examples(self, split: str) -> int:
        """Records in ``split``."""
        return sum(self.shard_lengths[split])

    def split_files(self, split: str) -> list[Path]:
        """The ArrayRecord shard files of ``split``, in order."""
        n = len(self.shard_lengths[split])
        names = (
            self._template[split]
            .replace("{DATASET}", self._name)
            .replace("{SPLIT}", split)
            .replace("{FILEFORMAT}", "array_record")
            .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            for i in range(n)
        )
        return [self.path / name for name in names]

    def open_split(self, split: str) -> SplitSource:
        """Random access to the records of ``split`` (a ``DataPreparationError`` if files are missing or
        damaged)."""
        if split not in self.shard_lengths:
            raise ValueError(f"{self.path} has no split {split!r} (prepared: {list(self.shard_lengths)}).")
        files = self.split_files(split)
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DataPreparationError(
                f"The prepared data set in {self.path} lacks {', '.join(missing)} named in its "
                f"dataset_info.json: it was copied incompletely. Copy the whole folder again, or "
                f"{_fix(self.path, self.repair, start=False)}"
            )
        return SplitSource(files, self.repair)


def find_version(dataset_dir: Path) -> Path | None:
    """The newest ``<dataset_dir>/<x.y.z>`` folder holding a ``dataset_info.json`` (tfds writes it last)."""
    if not dataset_dir.is_dir():
        return None
    versions = [
        p for p in dataset_dir.iterdir() if _VERSION.match(p.name) and (p / "dataset_info.json").exists()
    ]
    key = lambda p: tuple(int(x) for x in p.name.split("."))  # noqa: E731
    return max(versions, key=key, default=None)


def read_prepared(path: Path, repair: str = "") -> PreparedDataset:
    """Parse the metadata of the prepared version folder ``path`` (a ``DataPreparationError`` naming it if
    unusable; ``repair``: the command that prepares it again, quoted in messages)."""
    path = Path(path)
    try:
        info = json.loads((path / "dataset_info.json").read_text())
        features = json.loads((path / "features.json").read_text())["featuresDict"]["features"]
        if info.get("fileFormat", "tfrecord") != "array_record":
            raise ValueError(f"file format {info.get('fileFormat', 'tfrecord')!r}, not 'array_record'")
        dims = features["image"]["image"]["shape"]["dimensions"]
        num_classes = int(features["label"]["classLabel"]["numClasses"])
        splits = {s["name"]: tuple(int(n) for n in s.get("shardLengths", ())) for s in info["splits"]}
        templates = {s["name"]: s.get("filepathTemplate", _DEFAULT_TEMPLATE) for s in info["splits"]}
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DataPreparationError(
            f"{path} is not a usable prepared data set ({type(err).__name__}: {err}); it needs an "
            f"ArrayRecord image classification set as tfds prepares it. {_fix(path, repair)}"
        ) from err
    labels = path / "label.labels.txt"
    names = labels.read_text().splitlines() if labels.exists() else [str(i) for i in range(num_classes)]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return PreparedDataset(path, splits, tuple(names), shape, info["name"], templates, repair)
