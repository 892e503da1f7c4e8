"""Every data set spinal_jax knows, in one table: tfds name, splits, original files, builder kind, and the
reference preprocessing (normalisation statistics and augmentation policy of the SpinalNet reference
scripts; docs/SPINALNET.md).

Adding a data set is one ``DatasetSpec`` entry in ``_SPECS`` below; one with a builder of its own also
needs the builder's module, which defines its :class:`~spinal_jax.data.kinds.DatasetKind` (see
docs/DATA.md, "Adding a data set").
"""

from __future__ import annotations

import dataclasses
import difflib

from spinal_jax.data import image_folder_builder, qmnist_builder, quickdraw_builder
from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.kinds import STOCK, DatasetKind
from spinal_jax.data.qmnist_builder import QMNIST_FILES

MNIST_STATS = ((0.1307,), (0.3081,))
HALF_STATS = ((0.5,), (0.5,))
NO_NORM_RGB = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    Attributes:
      name: the config name (``emnist/letters``...).
      kind: how it is prepared: ``kinds.STOCK`` (a tfds catalog builder) or the ``KIND`` of a builder
        module of our own.
      tfds_name: the tfds builder name (passed to ``tfds.builder`` for stock sets); prepared versions live
        in ``<data_dir>/<tfds_name>[/<builder config>]/<version>``.
      splits: how our 'train' / 'validation' / 'test' map onto the prepared tfds splits; a missing
        validation entry means it is carved from train by ``validation_fraction``.
      manual_files: the original files a manual dir must hold (names as tfds registers them).
      stats: default (mean, std) per channel, applied to images scaled to [0, 1].
      policy: reference augmentation policy (a name in ``policies.POLICIES``).
      source: where the original files come from, for error messages.
      default_image_size: side of the square images the models get (0: the native size).
      shared_folder: the folder under ``<shared>/data`` holding the original files, where the shared
        data has them ('' = none; then the manual dir defaults to ``<data_dir>/downloads/manual/<name>``).
    """

    name: str
    kind: DatasetKind
    tfds_name: str
    splits: dict[str, str]
    manual_files: tuple[str, ...]
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    policy: str
    source: str
    default_image_size: int = 0
    shared_folder: str = ""


_TRAIN_TEST = {"train": "train", "test": "test"}

_SPECS = [
    DatasetSpec(
        "mnist",
        STOCK,
        "mnist",
        _TRAIN_TEST,
        MNIST_FILES,
        MNIST_STATS,
        "mnist",
        "http://yann.lecun.com/exdb/mnist/ (or ../shared/data/mnist)",
        shared_folder="mnist",
    ),
    # Our own builder; 'test' is the full 60,000-image QMNIST test set (its first 10,000 = MNIST's test set).
    DatasetSpec(
        "qmnist",
        qmnist_builder.KIND,
        "qmnist",
        _TRAIN_TEST,
        QMNIST_FILES,
        MNIST_STATS,
        "mnist",
        "https://github.com/facebookresearch/qmnist (the four qmnist-*.gz files of the release)",
    ),
    DatasetSpec(
        "fashion_mnist",
        STOCK,
        "fashion_mnist",
        _TRAIN_TEST,
        MNIST_FILES,
        HALF_STATS,
        "fashion",
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    DatasetSpec(
        "kmnist",
        STOCK,
        "kmnist",
        _TRAIN_TEST,
        MNIST_FILES,
        MNIST_STATS,
        "mnist",
        "https://github.com/rois-codh/kmnist (the MNIST-format files)",
    ),
    *(
        DatasetSpec(
            f"emnist/{c}",
            STOCK,
            f"emnist/{c}",
            _TRAIN_TEST,
            ("gzip.zip",),
            MNIST_STATS,
            "mnist",
            "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
        )
        for c in ("balanced", "letters", "digits")
    ),
    DatasetSpec(
        "cifar10",
        STOCK,
        "cifar10",
        _TRAIN_TEST,
        ("cifar-10-binary.tar.gz",),
        NO_NORM_RGB,
        "cifar",
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    ),
    DatasetSpec(
        "cifar100",
        STOCK,
        "cifar100",
        _TRAIN_TEST,
        ("cifar-100-binary.tar.gz",),
        CIFAR100_STATS,
        "cifar",
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    ),
    DatasetSpec(
        "svhn_cropped",
        STOCK,
        "svhn_cropped",
        _TRAIN_TEST,
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
        CIFAR100_STATS,
        "crop",
        "http://ufldl.stanford.edu/housenumbers/",
    ),
    DatasetSpec(
        "stl10",
        STOCK,
        "stl10",
        _TRAIN_TEST,
        ("stl10_binary.tar.gz",),
        CIFAR100_STATS,
        "cifar",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    ),
    # The official ImageNet validation set is our test split; validation is carved from train.
    DatasetSpec(
        "imagenet2012",
        STOCK,
        "imagenet2012",
        {"train": "train", "test": "validation"},
        ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        IMAGENET_STATS,
        "inception",
        "https://image-net.org/download (log in, then download the two tars)",
        224,
    ),
    DatasetSpec(
        "quickdraw",
        quickdraw_builder.KIND,
        "quickdraw_subset",
        {"train": "train", "validation": "validation", "test": "test"},
        (),
        MNIST_STATS,
        "mnist",
        "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/<class>.npy",
        shared_folder="quickdraw_bitmap",
    ),
    DatasetSpec(
        "image_folder",
        image_folder_builder.KIND,
        "spinal_image_folder",
        _TRAIN_TEST,
        (),
        NO_NORM_RGB,
        "cifar",
        "a <split>/<class>/*.jpg tree, or <name>_<split>.tar.gz archives of such trees",
        shared_folder="cifar10_jpeg",
    ),
]

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; a ``DataConfigError`` names the closest known names."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=2)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise DataConfigError(
            f"data.name: unknown data set {name!r}; {hint}Known data sets: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[name]
