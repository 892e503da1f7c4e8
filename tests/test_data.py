"""Input pipelines on real data from ../shared/data: MNIST, Quick Draw, CIFAR-10 JPEG folders."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spinal_jax.data import DataPreparationError, create_input_pipeline, default_data_config, prepare_dataset
from spinal_jax.data.config import shared_dir, validate_data_config
from spinal_jax.data.prepare import dataset_dir
from spinal_jax.data.records import find_version, parse_example, read_prepared
from spinal_jax.data.tfds_builders import make_builder
from spinal_jax.errors import UserError
from tests.training_helpers.tf_free_site import tf_free_site

DATA = shared_dir() / "data"
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
QUICKDRAW = ["apple", "bicycle", "cat", "diamond", "eye", "fish"]


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real data file(s) absent: {missing}")


def _idx_labels(path: Path) -> np.ndarray:
    """Labels straight from an MNIST idx1 file (independent of tfds)."""
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8)


@pytest.fixture(scope="session")
def mnist_config(tfds_dir):
    _need(*(DATA / "mnist" / f for f in MNIST_FILES))
    c = default_data_config()
    c.name, c.data_dir, c.manual_dir = "mnist", str(tfds_dir), str(DATA / "mnist")
    c.batch_size, c.eval_batch_size, c.augment = 400, 1000, "none"
    prepare_dataset(validate_data_config(c))
    return c


def _config(base, **kw):
    c = base.copy_and_resolve_references()
    for k, v in kw.items():
        c[k] = v
    return c


# -- MNIST ------------------------------------------------------------------------------------------
def test_mnist_sizes_and_per_class_counts(mnist_config):
    pipe = create_input_pipeline(mnist_config, local_device_count=1, process_index=0, process_count=1)
    assert pipe.num_examples == {"train": 54000, "validation": 6000, "test": 10000}
    assert pipe.num_classes == 10 and pipe.class_names == [str(i) for i in range(10)]
    assert pipe.image_shape == (28, 28, 1)
    train, val, test = (pipe.labels(s) for s in ("train", "validation", "test"))
    full_train = np.bincount(np.concatenate([train, val]), minlength=10)
    assert full_train.tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test, minlength=10).tolist() == MNIST_TEST_COUNTS
    # Independent reference: the original label files.
    assert full_train.tolist() == np.bincount(_idx_labels(DATA / "mnist" / MNIST_FILES[1])).tolist()
    assert np.bincount(test).tolist() == np.bincount(_idx_labels(DATA / "mnist" / MNIST_FILES[3])).tolist()


def test_train_batch_layout(mnist_config):
    pipe = create_input_pipeline(
        _config(mnist_config, batch_size=96, eval_batch_size=1024),
        local_device_count=8,
        process_index=1,
        process_count=2,
    )
    assert (pipe.global_batch_size, pipe.per_device_batch_size, pipe.steps_per_epoch) == (96, 6, 54000 // 96)
    batch = next(pipe.train_iterator())
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 6, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8, 6) and batch["label"].dtype == np.int32
    # Normalised with the MNIST statistics: background pixels are (0 - 0.1307) / 0.3081.
    np.testing.assert_allclose(batch["image"].min(), -0.1307 / 0.3081, rtol=1e-6)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_train_shards_disjoint_and_cover(mnist_config, processes):
    pipes = [
        create_input_pipeline(mnist_config, local_device_count=1, process_index=p, process_count=processes)
        for p in range(processes)
    ]
    _, train_indices = pipes[0].split_record_indices("train")
    per_epoch = pipes[0].steps_per_epoch * 400 // processes
    assert per_epoch * processes == 54000  # 400 divides 54,000: nothing dropped
    for epoch in (0, 1):
        shards = []
        for pipe in pipes:
            records = pipe.train_records()
            shards.append([records.record_index(epoch * per_epoch + i) for i in range(per_epoch)])
        flat = np.concatenate(shards)
        assert len(set(flat.tolist())) == len(flat) == 54000
        assert set(flat.tolist()) == set(train_indices.tolist())
        if epoch == 0:
            first = flat.copy()
    assert not np.array_equal(first, flat)  # reshuffled each epoch


def test_train_batches_are_the_sharded_records(mnist_config):
    pipe = create_input_pipeline(mnist_config, local_device_count=2, process_index=1, process_count=2)
    records = pipe.train_records()
    batch = next(pipe.train_iterator())
    source = make_builder(mnist_config).as_data_source(split="train")  # tfds's own reader and decoder
    expected = np.stack([source[records.record_index(i)]["image"] for i in range(200)])
    labels = np.array([source[records.record_index(i)]["label"] for i in range(200)])
    np.testing.assert_array_equal(batch["label"].reshape(-1), labels)
    np.testing.assert_allclose(
        batch["image"].reshape(200, 28, 28, 1), (expected / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("processes", [1, 4])
def test_eval_visits_every_example_once(mnist_config, processes):
    seen_labels, masks, shards = [], 0, []
    for p in range(processes):
        pipe = create_input_pipeline(
            _config(mnist_config, eval_batch_size=1024),
            local_device_count=2,
            process_index=p,
            process_count=processes,
        )
        shard, steps = pipe.eval_shard("test")
        shards.append(shard)
        batches = list(pipe.eval_batches("test"))
        assert len(batches) == steps
        for b in batches:
            assert b["mask"].shape == (2, 512 // processes) and b["mask"].dtype == bool
            assert b["image"].shape == (2, 512 // processes, 28, 28, 1)
            seen_labels.append(b["label"][b["mask"]])
            masks += int(b["mask"].sum())
    assert masks == 10000
    assert np.bincount(np.concatenate(seen_labels)).tolist() == MNIST_TEST_COUNTS
    flat = np.concatenate(shards)
    assert sorted(flat.tolist()) == list(range(10000))


@pytest.mark.parametrize("augment", ["none", "reference"])
def test_iterator_state_restores_exact_batches(mnist_config, augment):
    cfg = _config(mnist_config, augment=augment, batch_size=100, seed=3)
    pipe = create_input_pipeline(cfg, local_device_count=2, process_index=0, process_count=1)
    it = pipe.train_iterator()
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert (state["step"], state["epoch"], state["position"]) == (5, 0, 5)
    expected = [next(it) for _ in range(3)]
    fresh = create_input_pipeline(
        cfg, local_device_count=2, process_index=0, process_count=1
    ).train_iterator()
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    other = create_input_pipeline(
        _config(cfg, seed=4), local_device_count=2, process_index=0, process_count=1
    )
    with pytest.raises(ValueError, match="does not match this run"):
        other.train_iterator().set_state(state)
    flipped = "none" if augment == "reference" else "reference"
    changed = create_input_pipeline(
        _config(cfg, augment=flipped), local_device_count=2, process_index=0, process_count=1
    )
    with pytest.raises(ValueError, match="'stream'"):
        changed.train_iterator().set_state(state)


def test_epochs_roll_over_with_new_order(mnist_config):
    pipe = create_input_pipeline(mnist_config, local_device_count=1, process_index=0, process_count=1)
    steps = pipe.steps_per_epoch
    assert steps == 135
    it = pipe.train_iterator()
    it.set_state({**it.get_state(), "step": steps - 1, "epoch": 0, "position": steps - 1})
    last, first = next(it), next(it)
    assert it.get_state()["epoch"] == 1 and it.get_state()["position"] == 1
    records = pipe.train_records()
    source = make_builder(mnist_config).as_data_source(split="train")
    for batch, step in ((last, steps - 1), (first, steps)):
        want = [source[records.record_index(step * 400 + i)]["label"] for i in range(400)]
        np.testing.assert_array_equal(batch["label"].reshape(-1), want)
    # Epoch 1 is a fresh permutation: a draw without replacement, in a new order.
    epoch0 = [records.record_index(i) for i in range(54000)]
    epoch1 = [records.record_index(54000 + i) for i in range(54000)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


# -- Quick Draw ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def quickdraw_config(tfds_dir):
    _need(*(DATA / "quickdraw_bitmap" / f"{c}.npy" for c in QUICKDRAW))
    c = default_data_config()
    c.name, c.data_dir, c.manual_dir = "quickdraw", str(tfds_dir), str(DATA / "quickdraw_bitmap")
    c.classes, c.batch_size, c.augment = tuple(QUICKDRAW), 100, "none"
    return c


def _row_hashes(rows: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(r.tobytes()).digest() for r in rows.reshape(len(rows), -1)]


@pytest.mark.parametrize("cap", [0, 1000])
def test_quickdraw_splits(quickdraw_config, cap):
    cfg = _config(quickdraw_config, per_class_cap=cap)
    pipe = create_input_pipeline(cfg, local_device_count=1, process_index=0, process_count=1)
    per_class = cap or 3000
    assert pipe.class_names == QUICKDRAW and pipe.image_shape == (28, 28, 1)
    assert pipe.num_examples == {"train": 6 * (per_class - 750), "validation": 6 * 250, "test": 6 * 500}
    images, labels = {}, {}
    for split in ("train", "validation", "test"):
        x, y = pipe.device_split(split)
        raw = np.rint(x * 0.3081 * 255 + 0.1307 * 255).astype(np.uint8)  # undo the normalisation
        images[split], labels[split] = raw, y
        assert np.bincount(y, minlength=6).tolist() == [len(y) // 6] * 6
    for label, name in enumerate(QUICKDRAW):
        rows = np.load(DATA / "quickdraw_bitmap" / f"{name}.npy")[:per_class]
        file_rows = Counter(_row_hashes(rows))
        split_rows = [Counter(_row_hashes(images[s][labels[s] == label])) for s in images]
        # Each example is a row of its own class's file; the splits partition the (capped) file.
        assert sum(split_rows, Counter()) == file_rows
        exclusive = [set(c) - set().union(*(o for o in split_rows if o is not c)) for c in split_rows]
        assert all(len(e) > 0.99 * len(c) for e, c in zip(exclusive, split_rows, strict=True))


# -- image folders (CIFAR-10 JPEG) ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def cifar_jpeg_config(tfds_dir, tmp_path_factory):
    """The real test archive plus the first 20 train images per class (to keep preparation fast)."""
    archives = DATA / "cifar10_jpeg"
    _need(archives / "cifar10_jpeg_test.tar.gz", archives / "cifar10_jpeg_train.tar.gz")
    manual = tmp_path_factory.mktemp("cifar_manual")
    (manual / "cifar10_jpeg_test.tar.gz").symlink_to(archives / "cifar10_jpeg_test.tar.gz")
    taken: Counter = Counter()
    with tarfile.open(archives / "cifar10_jpeg_train.tar.gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and taken[parts[-2]] < 20:
                taken[parts[-2]] += 1
                out = manual / "train" / parts[-2] / parts[-1]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
    c = default_data_config()
    c.name, c.data_dir, c.manual_dir = "image_folder", str(tfds_dir), str(manual)
    c.batch_size, c.eval_batch_size, c.augment = 20, 1000, "none"
    return c


def test_cifar10_jpeg_test_split(cifar_jpeg_config):
    pipe = create_input_pipeline(cifar_jpeg_config, local_device_count=1, process_index=0, process_count=1)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert pipe.class_names == classes and pipe.image_shape == (32, 32, 3)
    assert pipe.num_examples == {"train": 180, "validation": 20, "test": 10000}
    assert np.bincount(pipe.labels("test")).tolist() == [1000] * 10
    # test/cat/0000.jpg, decoded independently, is among the cat test images.
    with tarfile.open(DATA / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz") as tar:
        name = next(m for m in tar.getnames() if m.endswith("test/cat/0000.jpg"))
        cat0 = np.asarray(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("RGB"))
    batch = next(pipe.eval_batches("test"))
    assert batch["image"].shape == (1, 1000, 32, 32, 3) and batch["mask"].all()
    x, y = pipe.device_split("test")
    raw = np.rint(x * 255).astype(np.uint8)  # no normalisation for CIFAR-10 (reference CNN/VGG)
    hits = np.flatnonzero((raw == cat0).all(axis=(1, 2, 3)))
    assert len(hits) == 1 and y[hits[0]] == classes.index("cat")


# -- device path -------------------------------------------------------------------------------------------
def test_device_augment_path(mnist_config):
    cfg = _config(mnist_config, augment="reference", augment_on="device", batch_size=100)
    pipe = create_input_pipeline(cfg, local_device_count=1, process_index=0, process_count=1)
    host_free = next(pipe.train_iterator())
    plain = next(
        create_input_pipeline(
            _config(cfg, augment="none"), local_device_count=1, process_index=0, process_count=1
        ).train_iterator()
    )
    np.testing.assert_array_equal(host_free["image"], plain["image"])  # the host does not augment
    import jax

    keys = jax.random.split(jax.random.key(0), 100).reshape(1, 100)  # one key per image
    out = jax.jit(pipe.device_augment)(keys, host_free["image"])
    assert out.shape == host_free["image"].shape and out.dtype == np.float32
    assert not np.allclose(np.asarray(out), host_free["image"])
    x, y = pipe.device_split("validation")
    assert x.shape == (6000, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(y, pipe.labels("validation"))


# -- errors ----------------------------------------------------------------------------------------------
# Every failure a user can fix is one spinal_jax.errors.UserError (also a ValueError) whose message names
# the problem and the fix; the command-line entry points print it on one line.
def _pipeline(cfg, devices: int = 1):
    return create_input_pipeline(cfg, local_device_count=devices, process_index=0, process_count=1)


def test_config_errors():
    cases = [
        ({"batchsize": 10}, r"data\.batchsize: unknown data config field"),
        ({"name": "mnistt"}, r"data\.name: unknown data set 'mnistt'; did you mean 'mnist'"),
        ({"name": "cifar"}, r"unknown data set 'cifar'; did you mean .*Known data sets: cifar10, cifar100"),
        ({"augment_on": "gpu"}, r"data\.augment_on: 'gpu' is not one of"),
        ({"batch_size": 12.5}, r"data\.batch_size: 12.5 has the wrong type"),
        ({"batch_size": 0}, r"data\.batch_size: must be a positive integer, got 0"),
        ({"batch_size": -8}, r"data\.batch_size: must be a positive integer, got -8"),
        ({"eval_batch_size": 0}, r"data\.eval_batch_size: must be a positive integer, got 0"),
        ({"validation_fraction": 1.5}, r"data\.validation_fraction"),
        (
            {"name": "quickdraw", "classes": ("cat", "cat")},
            r"data\.classes: give a non-empty list of distinct",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(UserError, match=message):
            validate_data_config(fields)
        with pytest.raises(ValueError, match=message):  # also a ValueError, for callers that catch that
            validate_data_config(fields)


def test_batch_must_divide_over_devices(mnist_config):
    with pytest.raises(
        UserError,
        match=r"batch_size=100 does not divide over 16 devices \(8 local x 2 "
        r"processes\); use a multiple of 16, e.g. 96 or 112",
    ):
        create_input_pipeline(
            _config(mnist_config, batch_size=100), local_device_count=8, process_index=0, process_count=2
        )


@pytest.mark.parametrize(
    "name, files",
    [
        ("mnist", MNIST_FILES),
        ("kmnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
        ("emnist/letters", ["gzip.zip"]),
        ("cifar10", ["cifar-10-binary.tar.gz"]),
        ("imagenet2012", ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"]),
        ("quickdraw", ["apple.npy", "cat.npy"]),
        ("image_folder", ["train/<class>/*.jpg"]),
    ],
)
def test_missing_manual_folder_error(tmp_path, name, files):
    """The folder of original files does not exist: the message says so, what to put there and where."""
    cfg = {"name": name, "data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path / "manual")}
    with pytest.raises(DataPreparationError) as err:
        _pipeline(cfg)
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    assert f"Data set {name!r} is not prepared in {tmp_path / 'tfds'}" in msg
    assert f"the folder of its original files, {tmp_path / 'manual'}, does not exist" in msg
    assert "data.manual_dir" in msg and "data.prepare=True" in msg
    for f in files:
        assert f in msg


def test_missing_files_error(tmp_path):
    """Real MNIST and Quick Draw files with one file left out; an image folder without a train split."""
    _need(*(DATA / "mnist" / f for f in MNIST_FILES), DATA / "quickdraw_bitmap" / "apple.npy")
    _need(DATA / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz")
    sources = {
        "mnist": [DATA / "mnist" / f for f in MNIST_FILES[:3]],
        "quickdraw": [DATA / "quickdraw_bitmap" / f"{c}.npy" for c in QUICKDRAW if c != "eye"],
        "image_folder": [DATA / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz"],
    }
    missing = {"mnist": MNIST_FILES[3], "quickdraw": "eye.npy", "image_folder": "{manual}/train/<class>/*"}
    for name, files in sources.items():
        manual = tmp_path / name
        manual.mkdir()
        for f in files:
            shutil.copy(f, manual / f.name)
        cfg = {"name": name, "data_dir": str(tmp_path / "tfds"), "manual_dir": str(manual)}
        with pytest.raises(DataPreparationError) as err:
            _pipeline(cfg)
        msg = str(err.value)
        assert f"its original files are missing: {missing[name].format(manual=manual)}." in msg
        assert f" in {manual} (or set data.manual_dir" in msg, msg
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))  # nothing was prepared


def test_not_prepared_and_prepare_false(tmp_path):
    cfg = {"name": "mnist", "data_dir": str(tmp_path), "prepare": False}
    with pytest.raises(DataPreparationError, match="not prepared .* data.prepare=False"):
        _pipeline(cfg)


def test_wrong_checksum_error(tmp_path):
    _need(*(DATA / "mnist" / f for f in MNIST_FILES))
    manual = tmp_path / "manual"
    manual.mkdir()
    for f in MNIST_FILES:
        shutil.copy(DATA / "mnist" / f, manual / f)
    labels = manual / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[100] ^= 0xFF  # same size, different sha256
    labels.write_bytes(bytes(data))
    cfg = {"name": "mnist", "data_dir": str(tmp_path / "tfds"), "manual_dir": str(manual)}
    with pytest.raises(DataPreparationError, match="wrong size or checksum") as err:
        _pipeline(cfg)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value) and str(manual) in str(err.value)


class _FailingBuilder:
    """Stands in for a tfds builder whose ``download_and_prepare`` raises ``error``."""

    url_infos = None  # no registered checksums to compare before preparing
    data_dir = ""

    def __init__(self, error: BaseException):
        self.error = error

    def download_and_prepare(self, download_config):
        raise self.error


def test_tfds_checksum_error_and_interrupts(tmp_path, monkeypatch):
    """tfds 4.9 raises ``NonMatchingChecksumError`` from ``core.download.download_manager`` (it has no
    ``tfds.download.NonMatchingChecksumError``): that one becomes a DataPreparationError naming the files;
    any other exception, KeyboardInterrupt included, propagates unchanged."""
    import tensorflow_datasets as tfds

    from spinal_jax.data import tfds_builders

    _need(*(DATA / "mnist" / f for f in MNIST_FILES))
    checksum_error = tfds.core.download.download_manager.NonMatchingChecksumError
    assert tfds_builders.checksum_errors(tfds) == (checksum_error,)
    cfg = validate_data_config(
        {"name": "mnist", "data_dir": str(tmp_path / "tfds"), "manual_dir": str(DATA / "mnist")}
    )
    raised = [checksum_error("Artifact x has wrong checksum"), KeyboardInterrupt(), RuntimeError("disk full")]
    for error in raised:
        monkeypatch.setattr(tfds_builders, "make_builder", lambda config, e=error: _FailingBuilder(e))
        expected = DataPreparationError if error is raised[0] else type(error)
        with pytest.raises(expected) as err:
            tfds_builders.prepare_with_tfds(cfg)
        if expected is DataPreparationError:
            msg = str(err.value)
            assert "wrong size or checksum (tfds: Artifact x has wrong checksum)" in msg
            assert all(f in msg for f in MNIST_FILES) and str(DATA / "mnist") in msg
        else:
            assert err.value is error


# -- the data-set registry -------------------------------------------------------------------------------
def test_a_new_builder_needs_only_its_catalog_entry(tmp_path, monkeypatch):
    """A data set with a builder of its own plugs in through one ``DatasetSpec`` entry naming its
    ``DatasetKind``: finding, checking, preparing and reading need nothing else. Here the builder (defined
    in this test) takes the first 60 train and 20 test digits of the real MNIST files."""
    import tensorflow_datasets as tfds

    from spinal_jax.data import catalog
    from spinal_jax.data.kinds import DatasetKind
    from spinal_jax.data.qmnist_builder import encode_png

    _need(*(DATA / "mnist" / f for f in MNIST_FILES))

    def digits(manual: Path, prefix: str, n: int):
        with gzip.open(manual / f"{prefix}-images-idx3-ubyte.gz") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        return images, _idx_labels(manual / f"{prefix}-labels-idx1-ubyte.gz")[:n]

    class FirstMnistDigits(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "The four MNIST idx files."

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=10),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            manual = Path(dl_manager.manual_dir)
            return {
                "train": self._generate_examples(manual, "train", 60),
                "test": self._generate_examples(manual, "t10k", 20),
            }

        def _generate_examples(self, manual, prefix, n):
            for i, (image, label) in enumerate(zip(*digits(manual, prefix, n), strict=True)):
                yield i, {"image": encode_png(image), "label": int(label)}

    kind = DatasetKind(
        "first_digits",
        lambda tfds, spec, config, data_dir, manual: FirstMnistDigits(
            data_dir=data_dir, file_format="array_record"
        ),
    )
    spec = dataclasses.replace(
        catalog.DATASETS["mnist"], name="first_digits", kind=kind, tfds_name="first_mnist_digits"
    )
    monkeypatch.setitem(catalog.DATASETS, "first_digits", spec)
    cfg = {"name": "first_digits", "data_dir": str(tmp_path), "batch_size": 9, "augment": "none"}
    pipe = _pipeline(cfg)
    assert pipe.num_examples == {"train": 54, "validation": 6, "test": 20}
    assert find_version(tmp_path / "first_mnist_digits") is not None
    x, y = pipe.device_split("test")
    images, labels = digits(DATA / "mnist", "t10k", 20)
    raw = np.rint((x * 0.3081 + 0.1307) * 255).astype(np.uint8)[..., 0]
    got = sorted(zip(map(bytes, raw), y.tolist(), strict=True))
    assert got == sorted(zip(map(bytes, images), labels.tolist(), strict=True))


# -- reading prepared data without tfds --------------------------------------------------------------------
def _example_message_class():
    """``tf.train.Example`` built from descriptors with the protobuf library (wire-identical: the map is a
    repeated key/value entry, the oneof three optional fields): an encoder independent of ours."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="spinal_test_example.proto", package="t", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto  # noqa: N806

    def message(name, *fields):
        m = fd.message_type.add(name=name)
        for number, (field, label, kind, type_name) in enumerate(fields, 1):
            f = m.field.add(name=field, number=number, label=label, type=kind)
            if type_name:
                f.type_name = type_name

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", rep, F.TYPE_BYTES, ""))
    message("FloatList", ("value", rep, F.TYPE_FLOAT, ""))
    message("Int64List", ("value", rep, F.TYPE_INT64, ""))
    message(
        "Feature",
        ("bytes_list", opt, F.TYPE_MESSAGE, ".t.BytesList"),
        ("float_list", opt, F.TYPE_MESSAGE, ".t.FloatList"),
        ("int64_list", opt, F.TYPE_MESSAGE, ".t.Int64List"),
    )
    message("Entry", ("key", opt, F.TYPE_STRING, ""), ("value", opt, F.TYPE_MESSAGE, ".t.Feature"))
    message("Features", ("feature", rep, F.TYPE_MESSAGE, ".t.Entry"))
    message("Example", ("features", opt, F.TYPE_MESSAGE, ".t.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Example"))


def test_parse_example_equals_protobuf_encoding():
    example_class, rng = _example_message_class(), np.random.default_rng(0)
    for _ in range(50):
        want = {
            "image": [rng.bytes(int(n)) for n in rng.integers(0, 300, rng.integers(0, 3))],
            "label": rng.integers(-(2**63), 2**63 - 1, rng.integers(0, 4), dtype=np.int64).tolist(),
            "weights": rng.standard_normal(rng.integers(0, 4)).astype(np.float32),
        }
        msg = example_class()
        for key, values in want.items():
            entry = msg.features.feature.add(key=key)
            kind = {"image": "bytes_list", "label": "int64_list", "weights": "float_list"}[key]
            getattr(entry.value, kind).value.extend(list(values))
        got = parse_example(msg.SerializeToString())
        assert got.keys() == want.keys()
        assert got["image"] == want["image"] and got["label"] == want["label"]
        np.testing.assert_array_equal(got["weights"], want["weights"])


def test_records_read_without_tfds_equal_tfds_reads(mnist_config):
    """Our ArrayRecord reader gives the bytes and labels tfds's own data source gives, record by record."""
    import tensorflow_datasets as tfds

    prepared = read_prepared(find_version(dataset_dir(mnist_config)))
    assert prepared.splits == ("train", "test") and prepared.class_names == tuple("0123456789")
    assert prepared.image_shape == (28, 28, 1) and prepared.num_examples("train") == 60000
    builder = make_builder(mnist_config)
    assert Path(builder.data_dir) == prepared.path
    for split in ("train", "test"):
        ours = prepared.open_split(split)
        theirs = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        assert len(ours) == len(theirs) == builder.info.splits[split].num_examples
        indices = np.random.default_rng(1).choice(len(ours), 300, replace=False).tolist()
        for mine, tfds_record in zip(ours.__getitems__(indices), theirs.__getitems__(indices), strict=True):
            assert mine["image"] == tfds_record["image"] and mine["label"] == tfds_record["label"]


def test_dataset_dir_is_the_tfds_builder_folder(mnist_config, quickdraw_config, cifar_jpeg_config):
    """Where we look for a prepared set (no tfds import) is where its tfds builder prepares it."""
    configs = [mnist_config, quickdraw_config, _config(quickdraw_config, per_class_cap=1000)]
    configs += [cifar_jpeg_config, *(_config(mnist_config, name=n) for n in ("qmnist", "emnist/letters"))]
    for c in configs:
        assert Path(make_builder(c).data_dir).parent == dataset_dir(c), c.name


def test_corrupt_prepared_folder_errors(mnist_config, tmp_path):
    source = find_version(dataset_dir(mnist_config))
    copy = tmp_path / "mnist" / source.name
    shutil.copytree(source, copy)
    (copy / "mnist-test.array_record-00000-of-00001").unlink()
    with pytest.raises(DataPreparationError, match="copied incompletely") as err:
        read_prepared(copy).open_split("test")
    assert "mnist-test.array_record-00000-of-00001" in str(err.value)
    assert f"or delete {copy} and run again with data.prepare=True" in str(err.value)
    (copy / "features.json").write_text("{")
    with pytest.raises(DataPreparationError, match="not a usable prepared data set") as err:
        _pipeline(_config(mnist_config, data_dir=str(tmp_path)))
    assert str(copy) in str(err.value)
    assert f"python -m spinal_jax.data --replace name=mnist data_dir={tmp_path} manual_dir=" in str(err.value)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 4]
    elif how == "random_bytes":
        data = np.random.default_rng(0).bytes(len(data))
    elif how == "flipped_bytes":  # same size, footer intact: found when the damaged records are read
        flipped = bytearray(data)
        for i in range(100_000, len(data) - 100_000, 50_000):
            flipped[i] ^= 0xFF
        data = bytes(flipped)
    else:
        assert how == "empty"
        data = b""
    path.write_bytes(data)


@pytest.mark.parametrize("how", ["truncated", "random_bytes", "flipped_bytes", "empty"])
def test_damaged_array_record_file(mnist_config, tmp_path, how):
    """A copy of the prepared MNIST whose test file is damaged: reading it (in grain's reader threads) is
    one DataPreparationError naming the file and giving the command that prepares the set again."""
    source = find_version(dataset_dir(mnist_config))
    copy = tmp_path / "mnist" / source.name
    shutil.copytree(source, copy)
    path = copy / "mnist-test.array_record-00000-of-00001"
    _damage(path, how)
    pipe = _pipeline(_config(mnist_config, data_dir=str(tmp_path), prepare=False))
    for read in (lambda: list(pipe.eval_batches("test")), lambda: pipe.labels("test")):
        with pytest.raises(DataPreparationError) as err:
            read()
        msg = str(err.value)
        assert f"The prepared data set in {copy} is damaged: {path} cannot be read (" in msg
        assert msg.endswith(
            f"Prepare it again from the original files: python -m spinal_jax.data --replace name=mnist "
            f"data_dir={tmp_path} manual_dir={DATA / 'mnist'}"
        )
        assert "\n" not in msg


def test_damaged_file_repaired_by_the_command_in_the_message(quickdraw_config, tmp_path):
    """The command a damaged-file message gives prepares the set again: the same batches as before."""
    cfg = _config(
        quickdraw_config,
        data_dir=str(tmp_path / "tfds"),
        per_class_cap=120,
        validation_per_class=10,
        test_per_class=10,
        batch_size=60,
    )
    want = next(_pipeline(cfg).train_iterator())
    version = find_version(dataset_dir(cfg))
    (train_file,) = version.glob("*-train.array_record-*")
    _damage(train_file, "truncated")
    with pytest.raises(DataPreparationError) as err:
        next(_pipeline(cfg).train_iterator())
    command = str(err.value).split("Prepare it again from the original files: ", 1)[1]
    assert "classes=apple,bicycle,cat,diamond,eye,fish per_class_cap=120" in command
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "spinal_jax.data", "--replace"]
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, *argv[1:]], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(version)
    got = next(_pipeline(cfg).train_iterator())
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_prepare_command_line_errors(tmp_path):
    """``python -m spinal_jax.data`` with a bad field or missing files: one line on stderr, exit status 2."""
    repo = Path(__file__).resolve().parents[1]
    for args, message in (
        (["nmae=mnist"], "error: 'nmae=mnist': give FIELD=VALUE with a data config field"),
        (["name=mnist", "batch_size=0"], "error: data.batch_size: must be a positive integer, got 0."),
        (
            ["name=quickdraw", f"data_dir={tmp_path}", f"manual_dir={tmp_path / 'none'}"],
            f"the folder of its original files, {tmp_path / 'none'}, does not exist",
        ),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "spinal_jax.data", *args], cwd=repo, capture_output=True, text=True
        )
        assert out.returncode == 2 and message in out.stderr, out.stderr[-3000:]
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_damaged_records_error(tmp_path):
    """A record that is not a tf.train.Example, or one without a label: one message naming the file."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from spinal_jax.data.records import SplitSource

    path = tmp_path / "damaged.array_record-00000-of-00001"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    no_label = _example_message_class()()
    no_label.features.feature.add(key="image").value.bytes_list.value.append(b"png")
    for record in (b"\x0a\xff", no_label.SerializeToString()):
        writer.write(record)
    writer.close()
    source = SplitSource([path])
    assert len(source) == 2
    for i in range(2):
        with pytest.raises(DataPreparationError, match="not an image classification example") as err:
            source[i]
        assert str(path) in str(err.value) and "data.prepare=True" in str(err.value)


def test_tfds_is_imported_in_one_preparation_function_only():
    """Static check over the package: the one import of tensorflow / tensorflow_datasets is the lazy one
    in ``tfds_builders._import_tfds`` (the builder modules get the module passed in), and the modules
    that find and read prepared data (``prepare``, ``records``, ``pipeline``) do not import
    ``tfds_builders`` at module level."""
    import ast

    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "spinal_jax").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
        scopes = {id(n): f.name for f in functions for n in ast.walk(f)}  # innermost function last
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(n.split(".")[0] in ("tensorflow", "tensorflow_datasets") for n in names):
                found.append((path.name, scopes.get(id(node))))
    assert found == [("tfds_builders.py", "_import_tfds")]
    for name in ("prepare.py", "records.py", "pipeline.py"):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "spinal_jax" / "data" / name).read_text())
        top = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert "spinal_jax.data.tfds_builders" not in top, name


# -- TensorFlow-free train time ------------------------------------------------------------------------------
_NO_TF_SCRIPT = """
import importlib.util, json, sys
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is still importable"
import spinal_jax.data, spinal_jax.data.augment_device, spinal_jax.data.throughput, spinal_jax.training
import spinal_jax.data.qmnist_builder, spinal_jax.data.quickdraw_builder, spinal_jax.data.image_folder_builder
from spinal_jax.data import create_input_pipeline
tfds_on_import = "tensorflow_datasets" in sys.modules  # tfds is loaded only where a data set is opened
cfg = json.loads(sys.argv[1])
pipe = create_input_pipeline(cfg)  # device and process counts from jax: 4 forced CPU devices, 1 process
batch = next(pipe.train_iterator())
n = sum(int(b["mask"].sum()) for b in pipe.eval_batches("test"))
tfds_on_read = "tensorflow_datasets" in sys.modules  # reading a prepared set needs no tfds either
try:  # preparing a stock builder is the one thing that needs TensorFlow: a clear error says so
    create_input_pipeline({**cfg, "data_dir": sys.argv[2]})
    raise AssertionError("preparing mnist without TensorFlow did not raise")
except spinal_jax.data.DataPreparationError as err:
    assert "needs TensorFlow" in str(err) and "spinal_jax[prepare]" in str(err), err
bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.") or m == "torch"]
tfds = [tfds_on_import, tfds_on_read]
out = {"shape": list(batch["image"].shape), "test": n, "tf_modules": bad, "tfds": tfds}
print(json.dumps(out))
"""


def test_train_time_modules_need_no_tensorflow(mnist_config, tmp_path):
    """Run in a Python whose site-packages lacks tensorflow / keras / torch (as on the GPU machine)."""
    view = tf_free_site(tmp_path / "site")
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": f"{view}{os.pathsep}{repo}",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    cfg = {k: mnist_config[k] for k in ("name", "data_dir", "manual_dir")}
    cfg.update(batch_size=100, augment="reference")
    out = subprocess.run(
        [sys.executable, "-S", "-c", _NO_TF_SCRIPT, json.dumps(cfg), str(tmp_path / "empty")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"shape": [4, 25, 28, 28, 1], "test": 10000, "tf_modules": [], "tfds": [False, False]}


def test_worker_processes_give_the_same_batches(quickdraw_config):
    cfg = _config(quickdraw_config, augment="reference", num_workers=2)
    with_workers = create_input_pipeline(cfg, local_device_count=1, process_index=0, process_count=1)
    threads = create_input_pipeline(
        _config(cfg, num_workers=0), local_device_count=1, process_index=0, process_count=1
    )
    a, b = with_workers.train_iterator(), threads.train_iterator()
    for _ in range(3):
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


_DISTRIBUTED_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
from spinal_jax.data import create_input_pipeline
pipe = create_input_pipeline(json.loads(sys.argv[3]))  # process index / count / devices from jax
records = pipe.train_records()
per_epoch = pipe.steps_per_epoch * pipe.global_batch_size // pipe.process_count
shard, steps = pipe.eval_shard("test")
batch = next(pipe.train_iterator())
real = sum(int(b["mask"].sum()) for b in pipe.eval_batches("test"))
print(json.dumps({"process": [jax.process_index(), jax.process_count()], "batch": list(batch["image"].shape),
                  "train": [records.record_index(i) for i in range(per_epoch)], "test": shard.tolist(),
                  "eval_steps": steps, "eval_real": real}))
"""


def test_two_real_processes_read_disjoint_shards(quickdraw_config, tmp_path):
    """Two processes joined by jax.distributed (gloo), each with 2 CPU devices; the pipeline asks jax.
    Both start on an empty data folder: one prepares the data set while the other waits on the lock."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {k: quickdraw_config[k] for k in ("name", "manual_dir", "augment")}
    cfg["data_dir"] = str(tmp_path / "tfds")
    cfg.update(classes=list(QUICKDRAW), batch_size=100, eval_batch_size=1000)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DISTRIBUTED_SCRIPT, str(port), str(i), json.dumps(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["process"] for r in results] == [[0, 2], [1, 2]]
    assert all(r["batch"] == [2, 25, 28, 28, 1] for r in results)
    train = [set(r["train"]) for r in results]
    assert not train[0] & train[1] and len(train[0] | train[1]) == 13500  # 13,500 = 135 steps x 100
    assert sorted(results[0]["test"] + results[1]["test"]) == list(range(3000))
    assert results[0]["eval_steps"] == results[1]["eval_steps"] == 3
    assert results[0]["eval_real"] + results[1]["eval_real"] == 3000
    prepared = [p.parent.name for p in (tmp_path / "tfds").rglob("dataset_info.json")]
    assert len(prepared) == 1 and not list((tmp_path / "tfds").rglob("*incomplete*")), prepared
