"""A TensorFlow-free tfds builder for image-folder data sets.

The manual dir holds ``<split>/<class>/<image>`` trees and/or ``.tar.gz`` / ``.tgz`` / ``.tar`` archives of
such trees (e.g. ``cifar10_jpeg_train.tar.gz`` holding ``train/<class>/NNNN.jpg``). Splits are named
``train``, ``validation`` (also ``val``, ``valid``) and ``test``; class names are the sorted class folders.
JPEG and PNG bytes are stored as they are (no re-encoding).
"""

from __future__ import annotations

import dataclasses
import functools
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spinal_jax.data.kinds import Config, DatasetKind

SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def config_name(root: Path) -> str:
    """The folder's name (not its path), so a prepared copy reads anywhere."""
    return "".join(ch if ch.isalnum() else "_" for ch in Path(root).resolve().name) or "root"


def _parse(relpath: str) -> tuple[str, str] | None:
    """(split, class) of ``[prefix/]<split>/<class>/<file>.jpg``, or None for anything else."""
    parts = Path(relpath).parts
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    split = SPLIT_ALIASES.get(parts[-3].lower())
    return (split, parts[-2]) if split else None


def _archives(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def scan(root: Path) -> dict[str, dict[str, int]]:
    """``{split: {class: count}}`` over the folder trees and archives under ``root``."""
    counts: dict[str, dict[str, int]] = {}
    if not root.is_dir():
        return counts
    for path in root.rglob("*"):
        if path.is_file() and (parsed := _parse(str(path.relative_to(root)))):
            counts.setdefault(parsed[0], {}).setdefault(parsed[1], 0)
            counts[parsed[0]][parsed[1]] += 1
    for archive in _archives(root):
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and (parsed := _parse(member.name)):
                    counts.setdefault(parsed[0], {}).setdefault(parsed[1], 0)
                    counts[parsed[0]][parsed[1]] += 1
    return counts


def iter_images(root: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, class, encoded bytes) of every image of ``split`` under ``root``."""
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and (parsed := _parse(rel)) and parsed[0] == split:
            yield rel, parsed[1], path.read_bytes()
    for archive in _archives(root):
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and (parsed := _parse(member.name)) and parsed[0] == split:
                    yield f"{archive.name}:{member.name}", parsed[1], tar.extractfile(member).read()


@functools.cache
def image_folder_classes(tfds: types.ModuleType) -> types.SimpleNamespace:
    """``Config`` and ``Builder`` (the tfds builder class ``SpinalImageFolder``), defined on first use with
    the ``tfds`` module that ``spinal_jax.data.tfds_builders`` imports to prepare (this module imports
    no tfds)."""

    @dataclasses.dataclass
    class ImageFolderConfig(tfds.core.BuilderConfig):
        root: str = ""

    class SpinalImageFolder(tfds.core.GeneratorBasedBuilder):
        """Images from ``<split>/<class>/*.jpg`` trees or archives, one class label per folder."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [ImageFolderConfig(name="default", root="")]
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put <split>/<class>/*.jpg trees or .tar.gz archives of them in the manual dir."
        )

        def _counts(self) -> dict[str, dict[str, int]]:
            if not hasattr(self, "_scanned"):
                self._scanned = scan(Path(self.builder_config.root))
            return self._scanned

        def _info(self) -> tfds.core.DatasetInfo:
            classes = sorted({c for per_class in self._counts().values() for c in per_class})
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(names=classes),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager: tfds.download.DownloadManager):
            root = Path(self.builder_config.root)
            return {split: self._generate_examples(root, split) for split in sorted(self._counts())}

        def _generate_examples(self, root: Path, split: str):
            for key, label, data in iter_images(root, split):
                yield key, {"image": data, "label": label}

    return types.SimpleNamespace(Config=ImageFolderConfig, Builder=SpinalImageFolder)


def _subfolder(config: Config, manual: Path) -> str:
    del config
    return config_name(manual)


def _find_missing(config: Config, spec: Any, manual: Path) -> list[str]:
    del config, spec
    return [] if manual.is_dir() and "train" in scan(manual) else [f"{manual}/train/<class>/*"]


def _describe_files(config: Config, spec: Any) -> str:
    del config, spec
    return "a train/<class>/*.jpg and test/<class>/*.jpg tree, or .tar.gz archives of such trees"


def _make_builder(tfds: types.ModuleType, spec: Any, config: Config, data_dir: str, manual: Path) -> Any:
    del spec, config
    root = manual.resolve()
    image_folder = image_folder_classes(tfds)
    cfg = image_folder.Config(name=config_name(root), root=str(root))
    return image_folder.Builder(config=cfg, data_dir=data_dir, file_format="array_record")


KIND = DatasetKind(
    "image_folder",
    _make_builder,
    subfolder=_subfolder,
    find_missing=_find_missing,
    describe_files=_describe_files,
)
