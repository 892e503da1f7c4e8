"""How each kind of data set is found, checked and prepared: one :class:`DatasetKind` per tfds builder.

A kind bundles everything that differs between builders: the tfds builder itself, the sub-folder its
prepared versions live in, the original files it needs, a format check of those files, and a check of the
data config fields it reads. ``STOCK`` covers every builder of the tfds catalog; our own builders each
define their kind next to the builder (``qmnist_builder.KIND``, ``quickdraw_builder.KIND``,
``image_folder_builder.KIND``). A data set names its kind in its ``catalog.DatasetSpec``.

The hooks receive the ``tensorflow_datasets`` module as an argument where they need it, so this module
and the builder modules import neither tfds nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections

if TYPE_CHECKING:
    from spinal_jax.data.catalog import DatasetSpec

Config = ml_collections.ConfigDict
# (tfds module, spec, data config, data_dir, manual dir) -> a tfds DatasetBuilder writing ArrayRecord files.
BuilderFn = Callable[[types.ModuleType, "DatasetSpec", Config, str, Path], Any]


@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """One kind of tfds builder and its hooks (``None`` = the default stated per attribute).

    Attributes:
      name: the kind's name, for messages.
      make_builder: ``(tfds, spec, config, data_dir, manual_dir) -> builder``, the tfds builder that
        prepares the set into ``data_dir`` in ArrayRecord format.
      subfolder: ``(config, manual_dir) -> name`` of the builder config folder the prepared versions
        live in (``<data_dir>/<tfds_name>/<name>/<version>``); default: none, the versions live in
        ``<data_dir>/<tfds_name>/<version>``.
      expected_files: ``(config, spec) -> file names`` the manual dir must hold; default
        ``spec.manual_files``.
      find_missing: ``(config, spec, manual_dir) -> what is missing`` (empty when complete); default: the
        expected files that are not in the manual dir.
      describe_files: ``(config, spec) -> text`` saying what to put in the manual dir; default: the
        expected file names.
      check_contents: ``(manual_dir) -> None``, raises a ValueError naming a file whose format is wrong;
        default: no check.
      check_config: ``(config) -> None``, raises a ``DataConfigError`` naming a bad field of this kind;
        default: no check.
      config_fields: the data config fields (besides name and folders) that decide the prepared copy;
        ``python -m spinal_jax.data`` commands in messages repeat them.
      needs_tensorflow: preparing runs TensorFlow (stock tfds builders).
      tfds_checksums: compare each manual file with the size and sha256 tfds registers for the builder.
    """

    name: str
    make_builder: BuilderFn
    subfolder: Callable[[Config, Path], str] | None = None
    expected_files: Callable[[Config, DatasetSpec], tuple[str, ...]] | None = None
    find_missing: Callable[[Config, DatasetSpec, Path], list[str]] | None = None
    describe_files: Callable[[Config, DatasetSpec], str] | None = None
    check_contents: Callable[[Path], None] | None = None
    check_config: Callable[[Config], None] | None = None
    config_fields: tuple[str, ...] = ()
    needs_tensorflow: bool = False
    tfds_checksums: bool = False

    def files(self, config: Config, spec: DatasetSpec) -> tuple[str, ...]:
        """The file names the manual dir must hold."""
        return self.expected_files(config, spec) if self.expected_files else spec.manual_files

    def missing(self, config: Config, spec: DatasetSpec, manual: Path) -> list[str]:
        """What the manual dir lacks (file names, or a description); empty when it is complete."""
        if self.find_missing:
            return self.find_missing(config, spec, manual)
        return [f for f in self.files(config, spec) if not (manual / f).exists()]

    def wanted(self, config: Config, spec: DatasetSpec) -> str:
        """What to put in the manual dir, in words."""
        if self.describe_files:
            return self.describe_files(config, spec)
        return ", ".join(self.files(config, spec))


def _stock_builder(tfds: types.ModuleType, spec: DatasetSpec, config: Config, data_dir: str, manual: Path):
    del config, manual  # the catalog builder is named by spec.tfds_name; the manual dir is given at prepare
    return tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")


STOCK = DatasetKind("stock", _stock_builder, needs_tensorflow=True, tfds_checksums=True)
