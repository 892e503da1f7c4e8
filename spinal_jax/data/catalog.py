"""What spinal_jax knows about each data set: tfds name, splits, files, classes and reference preprocessing.

Normalisation defaults and augmentation policies follow ``shared/reference/spinalnet.md`` §2.
"""

from __future__ import annotations

import dataclasses

MNIST_STATS = ((0.1307,), (0.3081,))
HALF_STATS = ((0.5,), (0.5,))
NO_NORM_RGB = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Augmentation policies (host and device versions in augment_host.py / augment_device.py):
#   'mnist'     RandomPerspective(distortion 0.5, p 0.5) + RandomRotation(10, fill 0)
#   'fashion'   RandomRotation(10, fill 0) + RandomResizedCrop(size, scale (0.95, 1))
#   'cifar'     pad 4 (zeros) + random crop back to size + horizontal flip
#   'crop'      pad 4 + random crop, no flip (digits: SVHN)
#   'inception' Inception crop (RandomResizedCrop scale (0.08, 1)) to image_size + horizontal flip
#   'none'      nothing
POLICIES = ("mnist", "fashion", "cifar", "crop", "inception", "none")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The official facebookresearch/qmnist release names (read by qmnist_builder.py).
QMNIST_FILES = (
    "qmnist-train-images-idx3-ubyte.gz",
    "qmnist-train-labels-idx2-int.gz",
    "qmnist-test-images-idx3-ubyte.gz",
    "qmnist-test-labels-idx2-int.gz",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    Attributes:
      name: the config name (``emnist/letters``...).
      kind: 'stock' (a tfds catalog builder), 'qmnist', 'quickdraw' or 'image_folder' (builders of our
        own).
      tfds_name: the tfds builder name (passed to ``tfds.builder`` for stock sets); prepared versions live
        in ``<data_dir>/<tfds_name>[/<builder config>]/<version>``.
      splits: how our 'train' / 'validation' / 'test' map onto the prepared tfds splits; a missing
        validation entry means it is carved from train by ``validation_fraction``.
      manual_files: the original files a manual dir must hold (names as tfds registers them).
      stats: default (mean, std) per channel, applied to images scaled to [0, 1].
      policy: reference augmentation policy.
      source: where the original files come from, for error messages.
    """

    name: str
    kind: str
    tfds_name: str
    splits: dict[str, str]
    manual_files: tuple[str, ...]
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    policy: str
    source: str
    default_image_size: int = 0


_TRAIN_TEST = {"train": "train", "test": "test"}

_SPECS = [
    DatasetSpec(
        "mnist",
        "stock",
        "mnist",
        _TRAIN_TEST,
        MNIST_FILES,
        MNIST_STATS,
        "mnist",
        "http://yann.lecun.com/exdb/mnist/ (or ../shared/data/mnist)",
    ),
    # Our own builder; 'test' is the full 60,000-image QMNIST test set (its first 10,000 = MNIST's test set).
    DatasetSpec(
        "qmnist",
        "qmnist",
        "qmnist",
        _TRAIN_TEST,
        QMNIST_FILES,
        MNIST_STATS,
        "mnist",
        "https://github.com/facebookresearch/qmnist (the four qmnist-*.gz files of the release)",
    ),
    DatasetSpec(
        "fashion_mnist",
        "stock",
        "fashion_mnist",
        _TRAIN_TEST,
        MNIST_FILES,
        HALF_STATS,
        "fashion",
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    DatasetSpec(
        "kmnist",
        "stock",
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
            "stock",
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
        "stock",
        "cifar10",
        _TRAIN_TEST,
        ("cifar-10-binary.tar.gz",),
        NO_NORM_RGB,
        "cifar",
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    ),
    DatasetSpec(
        "cifar100",
        "stock",
        "cifar100",
        _TRAIN_TEST,
        ("cifar-100-binary.tar.gz",),
        CIFAR100_STATS,
        "cifar",
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    ),
    DatasetSpec(
        "svhn_cropped",
        "stock",
        "svhn_cropped",
        _TRAIN_TEST,
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
        CIFAR100_STATS,
        "crop",
        "http://ufldl.stanford.edu/housenumbers/",
    ),
    DatasetSpec(
        "stl10",
        "stock",
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
        "stock",
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
        "quickdraw",
        "quickdraw_subset",
        {"train": "train", "validation": "validation", "test": "test"},
        (),
        MNIST_STATS,
        "mnist",
        "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/<class>.npy",
    ),
    DatasetSpec(
        "image_folder",
        "image_folder",
        "spinal_image_folder",
        _TRAIN_TEST,
        (),
        NO_NORM_RGB,
        "cifar",
        "a <split>/<class>/*.jpg tree, or <name>_<split>.tar.gz archives of such trees",
    ),
]

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, or a ValueError listing the known names."""
    if name not in DATASETS:
        raise ValueError(f"data.name: unknown data set {name!r}; use one of {sorted(DATASETS)}.")
    return DATASETS[name]
