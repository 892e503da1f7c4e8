"""QMNIST: our TF-free tfds builder (``spinal_jax/data/qmnist_builder.py``) and the input pipeline over it.

No real QMNIST copy is available on this machine (``../shared/data`` holds MNIST, Quick Draw and CIFAR-10
JPEG only), so every test writes small *synthetic* files in the official release format (gzipped IDX3
uint8 images, magic 2051; gzipped IDX2 big-endian int32 labels, magic 3074, 8 columns with the class in
column 0) into a temporary manual dir: 50 train and 30 test examples of random pixels.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spinal_jax.data import DataPreparationError, create_input_pipeline, default_data_config, prepare_dataset
from spinal_jax.data.config import validate_data_config
from spinal_jax.data.qmnist_builder import QMNIST_FILES
from spinal_jax.data.tfds_builders import make_builder
from spinal_jax.errors import UserError
from tests.training_helpers.tf_free_site import tf_free_site

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 50, 30


def _write_images(path: Path, images: np.ndarray, magic: int = 2051) -> None:
    header = np.array([magic, len(images), 28, 28], ">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def _write_labels(path: Path, labels: np.ndarray, magic: int = 3074) -> None:
    header = np.array([magic, *labels.shape], ">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + labels.astype(">i4").tobytes())


def write_qmnist(manual: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic QMNIST files in ``manual``; returns {split: (images (N, 28, 28), labels (N, 8))}."""
    rng = np.random.default_rng(seed)
    manual.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, (image_file, label_file) in (
        ("train", N_TRAIN, QMNIST_FILES[:2]),
        ("test", N_TEST, QMNIST_FILES[2:]),
    ):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.column_stack(
            [np.arange(n) % 10, rng.integers(0, 100_000, (n, 7))]  # class, then NIST-like metadata
        ).astype(np.int32)
        _write_images(manual / image_file, images)
        _write_labels(manual / label_file, labels)
        out[split] = (images, labels)
    return out


@pytest.fixture(scope="module")
def qmnist(tmp_path_factory):
    """(config, the written arrays); prepared once for the module."""
    root = tmp_path_factory.mktemp("qmnist")
    written = write_qmnist(root / "manual")
    c = default_data_config()
    c.name, c.data_dir, c.manual_dir = "qmnist", str(root / "tfds"), str(root / "manual")
    c.batch_size, c.eval_batch_size, c.augment = 15, 10, "none"
    prepare_dataset(validate_data_config(c))
    return c, written


def _hash(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image, np.uint8).reshape(28, 28).tobytes()).digest()


def test_prepared_splits_round_trip_exactly(qmnist):
    cfg, written = qmnist
    builder = make_builder(validate_data_config(cfg))  # tfds's own reader, independent of ours
    info = builder.info
    assert {s: info.splits[s].num_examples for s in info.splits} == {"train": N_TRAIN, "test": N_TEST}
    assert info.features["label"].names == [str(i) for i in range(10)]
    for split, (images, labels) in written.items():
        source = builder.as_data_source(split=split)
        got = {}
        for i in range(len(source)):
            ex = source[i]
            assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
            got[_hash(ex["image"])] = int(ex["label"])
        # tfds stores records in its own (key-hash) order: compare as image -> label maps; random
        # images are all distinct, so this is exact uint8 equality of every image, with its label.
        want = {_hash(img): int(lab[0]) for img, lab in zip(images, labels, strict=True)}
        assert len(want) == len(images) and got == want


def test_pipeline_splits_and_batches(qmnist):
    cfg, written = qmnist
    pipe = create_input_pipeline(cfg, local_device_count=1, process_index=0, process_count=1)
    assert pipe.num_examples == {"train": 45, "validation": 5, "test": N_TEST}  # validation: 10 % of train
    assert pipe.class_names == [str(i) for i in range(10)] and pipe.image_shape == (28, 28, 1)
    assert pipe.policy == "none" and pipe.spec.policy == "mnist"
    np.testing.assert_allclose(pipe.mean, [0.1307])
    np.testing.assert_allclose(pipe.std, [0.3081])
    batch = next(pipe.train_iterator())
    assert batch["image"].shape == (1, 15, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (1, 15) and batch["label"].dtype == np.int32
    evals = list(pipe.eval_batches("test"))
    assert len(evals) == 3 and all(b["image"].shape == (1, 10, 28, 28, 1) for b in evals)
    assert sum(int(b["mask"].sum()) for b in evals) == N_TEST
    # Train + validation partition the train file; test is the test file (images un-normalised exactly).
    for splits, file_split in ((("train", "validation"), "train"), (("test",), "test")):
        images, labels = written[file_split]
        got = []
        for s in splits:
            x, y = pipe.device_split(s)
            raw = np.rint((x * 0.3081 + 0.1307) * 255).astype(np.uint8)
            got += [(_hash(im), int(lab)) for im, lab in zip(raw, y, strict=True)]
        want = [(_hash(im), int(lab[0])) for im, lab in zip(images, labels, strict=True)]
        assert sorted(got) == sorted(want)


def test_reference_augmentation_runs(qmnist):
    cfg, _ = qmnist
    pipe = create_input_pipeline(
        {**cfg.to_dict(), "augment": "reference"}, local_device_count=1, process_index=0, process_count=1
    )
    assert pipe.policy == "mnist"
    batch = next(pipe.train_iterator())
    assert batch["image"].shape == (1, 15, 28, 28, 1) and np.isfinite(batch["image"]).all()


def _config_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_select_qmnist():
    from spinal_jax.config import data_config

    assert data_config("qmnist").name == "qmnist"
    assert _config_module("mnist_vgg5").get_config("qmnist").data.name == "qmnist"
    assert _config_module("mnist_vgg5_fast").get_config("qmnist,bf16").data.name == "qmnist"
    mnist_cnn = _config_module("mnist_cnn")
    assert mnist_cnn.get_config("qmnist,spinal").data.name == "qmnist"
    assert mnist_cnn.get_config().data.name == "mnist"


# -- errors ----------------------------------------------------------------------------------------------
def _cfg(tmp_path: Path) -> dict:
    return {"name": "qmnist", "data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path / "manual")}


def test_missing_file_error(tmp_path):
    write_qmnist(tmp_path / "manual")
    (tmp_path / "manual" / QMNIST_FILES[3]).unlink()
    with pytest.raises(DataPreparationError) as err:
        create_input_pipeline(_cfg(tmp_path), local_device_count=1, process_index=0, process_count=1)
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    assert "Data set 'qmnist'" in msg and f"its original files are missing: {QMNIST_FILES[3]}." in msg
    assert str(tmp_path / "manual") in msg and "data.manual_dir" in msg and "facebookresearch/qmnist" in msg
    for f in QMNIST_FILES:
        assert f in msg


def _corrupt(manual: Path, case: str) -> tuple[str, str]:
    """Damage one file of a written manual dir; returns (file name, expected message fragment)."""
    images = np.zeros((N_TRAIN, 28, 28), np.uint8)
    labels = np.zeros((N_TRAIN, 8), np.int32)
    if case == "label_magic":
        _write_labels(manual / QMNIST_FILES[1], labels, magic=2049)  # an MNIST idx1 label magic
        return QMNIST_FILES[1], "magic number 2049 (0x00000801), expected 3074"
    if case == "image_magic":
        _write_images(manual / QMNIST_FILES[2], images[:N_TEST], magic=2049)
        return QMNIST_FILES[2], "magic number 2049 (0x00000801), expected 2051"
    if case == "truncated":
        data = gzip.open(manual / QMNIST_FILES[0]).read()[:-100]
        with gzip.open(manual / QMNIST_FILES[0], "wb") as f:
            f.write(data)
        return QMNIST_FILES[0], "truncated or corrupt"
    assert case == "count"
    _write_labels(manual / QMNIST_FILES[1], labels[:-1])
    return QMNIST_FILES[1], f"{N_TRAIN} images but"


@pytest.mark.parametrize("case", ["label_magic", "image_magic", "truncated", "count"])
def test_bad_file_error(tmp_path, case):
    write_qmnist(tmp_path / "manual")
    name, fragment = _corrupt(tmp_path / "manual", case)
    with pytest.raises(DataPreparationError) as err:
        create_input_pipeline(_cfg(tmp_path), local_device_count=1, process_index=0, process_count=1)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "Replace it with the original release file" in msg
    assert "Data set 'qmnist'" in msg and str(tmp_path / "manual" / name) in msg and fragment in msg
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))  # nothing was prepared


# -- TensorFlow-free preparation ---------------------------------------------------------------------------
_NO_TF_SCRIPT = """
import importlib.util, json, sys
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is still importable"
from spinal_jax.data import create_input_pipeline
pipe = create_input_pipeline(json.loads(sys.argv[1]), local_device_count=1, process_index=0, process_count=1)
batch = next(pipe.train_iterator())
x, y = pipe.device_split("test")
bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.") or m == "torch"]
print(json.dumps({"sizes": pipe.num_examples, "shape": list(batch["image"].shape), "test_labels": y.tolist(),
                  "tf_modules": bad}))
"""


def test_prepare_needs_no_tensorflow(tmp_path):
    """Prepare (from scratch) and read in a Python whose site-packages lacks tensorflow / keras / torch."""
    written = write_qmnist(tmp_path / "manual")
    view = tf_free_site(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": f"{view}{os.pathsep}{REPO}", "JAX_PLATFORMS": "cpu"}
    cfg = {**_cfg(tmp_path), "batch_size": 15, "augment": "reference"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", _NO_TF_SCRIPT, json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tf_modules"] == [] and result["shape"] == [1, 15, 28, 28, 1]
    assert result["sizes"] == {"train": 45, "validation": 5, "test": N_TEST}
    assert sorted(result["test_labels"]) == sorted(written["test"][1][:, 0].tolist())
    assert (tmp_path / "tfds" / "qmnist" / "1.0.0" / "dataset_info.json").exists()
