"""Input pipelines on real data from ../shared/data: MNIST, Quick Draw, CIFAR-10 JPEG folders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from spinal_jax.data import create_input_pipeline, default_data_config, prepare_dataset
from spinal_jax.data.config import shared_dir, validate_data_config

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
def tfds_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


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
    source = pipe.builder.as_data_source(split="train")
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
    with pytest.raises(ValueError, match="does not match this pipeline"):
        other.train_iterator().set_state(state)


def test_epochs_roll_over_with_new_order(mnist_config):
    pipe = create_input_pipeline(mnist_config, local_device_count=1, process_index=0, process_count=1)
    steps = pipe.steps_per_epoch
    assert steps == 135
    it = pipe.train_iterator()
    it.set_state({**it.get_state(), "step": steps - 1, "epoch": 0, "position": steps - 1})
    last, first = next(it), next(it)
    assert it.get_state()["epoch"] == 1 and it.get_state()["position"] == 1
    records = pipe.train_records()
    source = pipe.builder.as_data_source(split="train")
    for batch, step in ((last, steps - 1), (first, steps)):
        want = [source[records.record_index(step * 400 + i)]["label"] for i in range(400)]
        np.testing.assert_array_equal(batch["label"].reshape(-1), want)
    # Epoch 1 is a fresh permutation: a draw without replacement, in a new order.
    epoch0 = [records.record_index(i) for i in range(54000)]
    epoch1 = [records.record_index(54000 + i) for i in range(54000)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
