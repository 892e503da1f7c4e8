"""A TensorFlow-free tfds builder for a chosen subset of Quick, Draw! numpy bitmaps.

The manual dir holds ``<class>.npy`` files in the official ``numpy_bitmap`` layout: uint8 ``(N, 784)``,
each row a 28x28 image with 0 = background. For each class, the first ``per_class_cap`` rows (all when 0)
are permuted with a seed fixed by the class name; the first ``test_per_class`` rows of that order are the
test split, the next ``validation_per_class`` the validation split, the rest train. The split therefore
depends only on the file, the class name and the config, never on the other classes chosen.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.kinds import Config, DatasetKind

DEFAULT_CLASSES = ("apple", "bicycle", "cat", "diamond", "eye", "fish")


def config_name(
    classes: tuple[str, ...], per_class_cap: int, validation_per_class: int, test_per_class: int
) -> str:
    """A name that identifies the class list, cap and split sizes (so each combination prepares once)."""
    key = "|".join([*classes, str(per_class_cap), str(validation_per_class), str(test_per_class)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"c{len(classes)}_cap{per_class_cap}_v{validation_per_class}_t{test_per_class}_{digest}"


def class_rows(path: Path, cap: int) -> np.ndarray:
    """The rows of one ``<class>.npy`` file, capped, as uint8 ``(n, 784)`` (memory-mapped read)."""
    rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2 or rows.shape[1] != 784 or rows.dtype != np.uint8:
        raise ValueError(
            f"quickdraw: {path} must be a uint8 array of shape (N, 784) (the official numpy_bitmap layout), "
            f"got {rows.dtype} {rows.shape}."
        )
    return np.asarray(rows[:cap] if cap else rows)


def split_order(class_name: str, n: int) -> np.ndarray:
    """The deterministic order of a class's rows: a permutation seeded by the class name."""
    return np.random.default_rng(zlib.crc32(class_name.encode())).permutation(n)


def split_indices(class_name: str, n: int, validation: int, test: int) -> dict[str, np.ndarray]:
    """Row indices of one class for 'train', 'validation' and 'test' (disjoint, covering all ``n``)."""
    order = split_order(class_name, n)
    return {
        "test": np.sort(order[:test]),
        "validation": np.sort(order[test : test + validation]),
        "train": np.sort(order[test + validation :]),
    }


@functools.cache
def quickdraw_classes(tfds: types.ModuleType) -> types.SimpleNamespace:
    """``make_config`` (of tfds BuilderConfigs) and ``Builder`` (the tfds builder class
    ``QuickdrawSubset``), defined on first use with the ``tfds`` module that
    ``spinal_jax.data.tfds_builders`` imports to prepare (this module imports no tfds)."""

    @dataclasses.dataclass
    class QuickdrawConfig(tfds.core.BuilderConfig):
        classes: tuple[str, ...] = ()
        per_class_cap: int = 0
        validation_per_class: int = 250
        test_per_class: int = 500

    def make_config(classes, per_class_cap, validation_per_class, test_per_class) -> QuickdrawConfig:
        return QuickdrawConfig(
            name=config_name(classes, per_class_cap, validation_per_class, test_per_class),
            classes=tuple(classes),
            per_class_cap=per_class_cap,
            validation_per_class=validation_per_class,
            test_per_class=test_per_class,
        )

    class QuickdrawSubset(tfds.core.GeneratorBasedBuilder):
        """Quick, Draw! bitmaps for a configured list of classes, with train/validation/test splits."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [make_config(DEFAULT_CLASSES, 0, 250, 500)]
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the official numpy_bitmap files <class>.npy in the manual dir."

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                        "label": tfds.features.ClassLabel(names=list(self.builder_config.classes)),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://github.com/googlecreativelab/quickdraw-dataset",
            )

        def _split_generators(self, dl_manager: tfds.download.DownloadManager):
            manual = Path(dl_manager.manual_dir)
            return {
                split: self._generate_examples(manual, split) for split in ("train", "validation", "test")
            }

        def _generate_examples(self, manual: Path, split: str):
            cfg = self.builder_config
            for label, name in enumerate(cfg.classes):
                rows = class_rows(manual / f"{name}.npy", cfg.per_class_cap)
                idx = split_indices(name, len(rows), cfg.validation_per_class, cfg.test_per_class)[split]
                for i in idx:
                    image = Image.fromarray(rows[i].reshape(28, 28, 1)[..., 0], mode="L")
                    yield f"{name}_{i}", {"image": image, "label": label}

    return types.SimpleNamespace(make_config=make_config, Builder=QuickdrawSubset)


def _subfolder(config: Config, manual: Path) -> str:
    del manual  # the prepared copy is named by the config, not by where the files were
    return config_name(
        tuple(config.classes), config.per_class_cap, config.validation_per_class, config.test_per_class
    )


def _expected_files(config: Config, spec: Any) -> tuple[str, ...]:
    del spec
    return tuple(f"{c}.npy" for c in config.classes)


def _check_config(config: Config) -> None:
    if not config.classes or len(set(config.classes)) != len(config.classes):
        raise DataConfigError(
            f"data.classes: give a non-empty list of distinct Quick Draw classes, got {config.classes}."
        )


def _make_builder(tfds: types.ModuleType, spec: Any, config: Config, data_dir: str, manual: Path) -> Any:
    del spec, manual
    quickdraw = quickdraw_classes(tfds)
    cfg = quickdraw.make_config(
        tuple(config.classes), config.per_class_cap, config.validation_per_class, config.test_per_class
    )
    # tfds refuses a custom config equal to a predefined one: pass the predefined one by name.
    predefined = {c.name for c in quickdraw.Builder.BUILDER_CONFIGS}
    config_arg = cfg.name if cfg.name in predefined else cfg
    return quickdraw.Builder(config=config_arg, data_dir=data_dir, file_format="array_record")


KIND = DatasetKind(
    "quickdraw",
    _make_builder,
    subfolder=_subfolder,
    expected_files=_expected_files,
    check_config=_check_config,
    config_fields=("classes", "per_class_cap", "validation_per_class", "test_per_class"),
)
