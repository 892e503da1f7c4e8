"""python -m spinal_jax.predict on a real MNIST run trained here (30 steps of the MNIST CNN): the printed
probabilities are the model's own softmax on independently preprocessed test images, top-k order, the
--json schema, checkpoint choice, every refused input with its message, and the .npy loader against the
data pipeline's evaluation path on real Quick Draw rows (with a 2-step Quick Draw run for class names)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from spinal_jax import build, checkpoints, predict, training
from spinal_jax.config import data_config
from spinal_jax.data import augment_host, create_input_pipeline
from spinal_jax.data.quickdraw_builder import split_indices
from spinal_jax.errors import UserError
from tests.training_helpers.mnist_idx import _read_idx, load_mnist, shared_dir

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 12
QUICKDRAW = ("apple", "cat")
QUICKDRAW_SPLITS = {"per_class_cap": 60, "validation_per_class": 10, "test_per_class": 10}


def mnist_cnn_config():
    spec = importlib.util.spec_from_file_location("mnist_cnn_config", REPO / "configs" / "mnist_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.tensorboard, config.eval_test, config.log_every_steps = False, False, 10
    config.optim.name, config.optim.learning_rate = "adam", 0.003
    return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """MNIST CNN, batch 2000 (27 steps per epoch), 30 steps, saving every 10: latest 20, 27, 30; best 27."""
    config = mnist_cnn_config()
    config.data.batch_size, config.max_train_steps = 2000, 30
    config.checkpoint_every_steps, config.keep_checkpoints = 10, 3
    workdir = tmp_path_factory.mktemp("predict_run")
    summary = training.train_and_evaluate(config, workdir)
    assert summary["step"] == 30
    return workdir


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The first MNIST test images as 28x28 grayscale PNGs (from the idx file), their normalised pixels
    computed independently of spinal_jax.data, and their labels."""
    folder = tmp_path_factory.mktemp("digits")
    raw = _read_idx(shared_dir() / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")[:N_IMAGES]
    paths = []
    for i, image in enumerate(raw):
        paths.append(folder / f"digit_{i}.png")
        Image.fromarray(image, mode="L").save(paths[-1])
    images, labels = load_mnist("test", N_IMAGES)
    return paths, images, labels


def own_softmax(workdir: Path, images: np.ndarray, which: str = "best") -> tuple[np.ndarray, int]:
    """The restored model's softmax on ``images``, with the state restored as evaluate restores it."""
    config = predict.load_config(workdir)
    pipe = create_input_pipeline(config.data, local_device_count=1, process_index=0, process_count=1)
    model = build.build_model(config, pipe.num_classes)
    template, _ = build.build_train_state(config, model, pipe.image_shape, pipe.steps_per_epoch, 2000)
    state, _, _, step = checkpoints.Checkpoints(workdir, use_async=False).restore(template, which=which)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    return np.asarray(jax.nn.softmax(logits, axis=-1)), step


def full_probabilities(result: dict) -> np.ndarray:
    """``(N, 10)`` probabilities from predictions made with ``top=10``."""
    out = np.zeros((len(result["predictions"]), 10), np.float32)
    for i, pred in enumerate(result["predictions"]):
        for entry in pred["top"]:
            out[i, entry["label"]] = entry["probability"]
    return out


def test_probabilities_are_the_models_softmax_in_top_k_order(run_dir, digits):
    paths, images, labels = digits
    result = predict.predict_files(run_dir, paths, top=10)
    expected, step = own_softmax(run_dir, images)
    assert result["checkpoint"] == "best" and result["checkpoint_step"] == step == 27
    np.testing.assert_allclose(full_probabilities(result), expected, rtol=1e-5, atol=1e-7)
    for pred, probs in zip(result["predictions"], expected, strict=True):
        got = [entry["probability"] for entry in pred["top"]]
        assert got == sorted(got, reverse=True) and [e["label"] for e in pred["top"]] == list(
            np.argsort(-probs)
        )
        assert all(entry["class"] == str(entry["label"]) for entry in pred["top"])  # MNIST's names
    top1 = np.array([pred["top"][0]["label"] for pred in result["predictions"]])
    assert (top1 == labels).mean() >= 0.75, (top1, labels)  # 30 steps of Adam learn the digits


def test_resized_rgb_image_goes_through_the_eval_transform(run_dir, digits, tmp_path):
    """A 56x56 RGB copy of a digit: converted to luma (exact for R = G = B) and resized to 28x28 as the
    pipeline's eval transform does."""
    paths, _, _ = digits
    gray = np.asarray(Image.open(paths[0]))
    big = np.asarray(Image.fromarray(gray).resize((56, 56), Image.Resampling.NEAREST))
    Image.fromarray(np.repeat(big[..., None], 3, axis=-1), mode="RGB").save(tmp_path / "rgb.png")
    expected_pixels = augment_host.resize(big[..., None], 28).astype(np.float32) / 255.0
    expected, _ = own_softmax(run_dir, ((expected_pixels - 0.1307) / 0.3081)[None])
    result = predict.predict_files(run_dir, [tmp_path / "rgb.png"], top=10)
    np.testing.assert_allclose(full_probabilities(result), expected, rtol=1e-5, atol=1e-7)


def test_checkpoint_choice(run_dir, digits):
    paths, images, _ = digits
    latest = predict.predict_files(run_dir, paths[:3], checkpoint="latest", top=10)
    at_20 = predict.predict_files(run_dir, paths[:3], checkpoint="20", top=10)
    assert (latest["checkpoint"], latest["checkpoint_step"]) == ("latest", 30)
    assert (at_20["checkpoint"], at_20["checkpoint_step"]) == ("step", 20)
    expected, _ = own_softmax(run_dir, images[:3], which="latest")
    np.testing.assert_allclose(full_probabilities(latest), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(full_probabilities(at_20), full_probabilities(latest))


def test_cli_json_schema_and_text(run_dir, digits, capsys):
    paths, _, _ = digits
    assert predict.main(["--workdir", str(run_dir), "--json", "--top", "3", *map(str, paths[:2])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"workdir", "checkpoint", "checkpoint_step", "weights", "image_shape", "predictions"}
    assert doc["weights"] == "params" and doc["image_shape"] == [28, 28, 1]
    assert [p["file"] for p in doc["predictions"]] == list(map(str, paths[:2]))
    for pred in doc["predictions"]:
        assert set(pred) == {"file", "row", "top"} and pred["row"] is None and len(pred["top"]) == 3
        assert all(set(e) == {"label", "class", "probability"} for e in pred["top"])
    assert predict.main(["--workdir", str(run_dir), str(paths[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "checkpoint step 27 (best, params)" in lines[0] and lines[1] == str(paths[0]) and len(lines) == 7


def _write(path: Path, data: bytes | np.ndarray) -> Path:
    """``data`` saved at ``path``: arrays with ``np.save`` (the ``.npy`` format), bytes as they are."""
    if isinstance(data, np.ndarray):
        np.save(path, data, allow_pickle=False)
    else:
        path.write_bytes(data)
    return path


def test_refused_inputs_one_message_each(run_dir, digits, tmp_path):
    png = digits[0][0]
    truncated = _write(tmp_path / "truncated.png", png.read_bytes()[:60])
    cases = [
        ({"workdir": tmp_path / "absent"}, "is not a directory"),
        ({"workdir": tmp_path}, "holds no config.json"),
        ({"checkpoint": "newest"}, "give best, latest or a step number"),
        ({"checkpoint": "999"}, r"has no checkpoint of step 999; its steps: \[20, 27, 30\]"),
        ({"top": 0}, "--top=0: give at least 1"),
        ({"ema": True}, "holds no EMA weights .* drop --ema"),
        (
            {"files": [tmp_path / "missing.png"]},
            "missing.png: cannot read it \\(No such file or directory\\)",
        ),
        ({"files": [tmp_path]}, "cannot read it \\(Is a directory\\)"),
        ({"files": [_write(tmp_path / "notes.txt", b"not pixels")]}, "notes.txt: not an image"),
        ({"files": [truncated]}, "truncated.png: a damaged image"),
        ({"files": [_write(tmp_path / "rgba.npy", np.zeros((28, 28, 4), np.uint8))]}, r"\(28, 28, 4\) array"),
        (
            {"files": [_write(tmp_path / "float.npy", np.zeros((784,), np.float32))]},
            "float32 array; give uint8",
        ),
        ({"files": [_write(tmp_path / "empty.npy", np.zeros((0, 784), np.uint8))]}, "No images"),
        ({"files": [_write(tmp_path / "bad.npy", b"\x93NUMPY garbage")]}, "not a readable .npy array"),
    ]
    for overrides, message in cases:
        kwargs = {"workdir": run_dir, "files": [png], **overrides}
        with pytest.raises(UserError, match=message):
            predict.predict_files(kwargs.pop("workdir"), kwargs.pop("files"), **kwargs)


def test_command_line_error_is_one_line_with_status_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPINAL_TRACEBACK"}
    proc = subprocess.run(
        [sys.executable, "-m", "spinal_jax.predict", "--workdir", str(tmp_path), "x.png"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds no config.json: give the --workdir of a spinal_jax training run."
    ]


@pytest.fixture(scope="module")
def quickdraw_config(tfds_dir):
    """Quick Draw apple and cat, 60 rows each (10 test), prepared into the test run's data folder."""
    return data_config("quickdraw", classes=QUICKDRAW, batch_size=20, eval_batch_size=20, augment="none",
                       data_dir=str(tfds_dir), **QUICKDRAW_SPLITS)  # fmt: skip


def quickdraw_test_rows(name: str) -> np.ndarray:
    rows = np.load(shared_dir() / "data" / "quickdraw_bitmap" / f"{name}.npy", mmap_mode="r")[:60]
    return np.asarray(rows[split_indices(name, 60, 10, 10)["test"]])


def test_npy_rows_match_the_pipelines_eval_path(quickdraw_config, tmp_path):
    """The test rows of each class, as one (N, 784) file, one (784,) row and one (28, 28) image, give the
    same float32 arrays as the pipeline's eval path (compared as sets: prepared records are shuffled)."""
    pipe = create_input_pipeline(quickdraw_config, local_device_count=1, process_index=0, process_count=1)
    images, labels = pipe.device_split("test")
    for label, name in enumerate(QUICKDRAW):
        rows = quickdraw_test_rows(name)
        files = [_write(tmp_path / f"{name}.npy", rows), _write(tmp_path / f"{name}_row.npy", rows[0]),
                 _write(tmp_path / f"{name}_square.npy", rows[1].reshape(28, 28))]  # fmt: skip
        loaded, sources = predict.load_inputs(pipe, files)
        assert loaded.dtype == np.float32 and loaded.shape == (12, 28, 28, 1)
        assert [s["row"] for s in sources] == [*range(10), 0, 0]
        ours = sorted(loaded[:10], key=lambda x: x.tobytes())
        theirs = sorted(images[labels == label], key=lambda x: x.tobytes())
        np.testing.assert_array_equal(np.stack(ours), np.stack(theirs))
        np.testing.assert_array_equal(loaded[10:], loaded[:2])


def test_quickdraw_run_names_classes(quickdraw_config, tmp_path):
    """A 2-step MNIST-CNN run on the Quick Draw subset: predictions of a .npy file carry the data set's
    class names and one entry per row."""
    config = mnist_cnn_config()
    config.data, config.max_train_steps = quickdraw_config.copy_and_resolve_references(), 2
    training.train_and_evaluate(config, tmp_path / "run")
    rows = quickdraw_test_rows("cat")[:4]
    result = predict.predict_files(tmp_path / "run", [_write(tmp_path / "cats.npy", rows)], top=5)
    assert [p["row"] for p in result["predictions"]] == [0, 1, 2, 3]
    for pred in result["predictions"]:
        assert len(pred["top"]) == 2 and {e["class"] for e in pred["top"]} == set(QUICKDRAW)
        assert abs(sum(e["probability"] for e in pred["top"]) - 1) < 1e-5
