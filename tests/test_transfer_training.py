"""``train_and_evaluate`` with ``config.pretrained``: a converted torchvision ResNet-18 (random weights and
BatchNorm statistics, real Orbax checkpoint / .pth file) fine-tuned on real CIFAR-10 JPEGs in every
fine-tuning mode, and the errors for a missing file and weights of another architecture.

Needs the ``torch`` extra (to write the torchvision weights); skipped without it.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import tarfile

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from spinal_jax import build, finetune, pretrained, steps, training  # noqa: E402
from spinal_jax import config as config_lib  # noqa: E402
from spinal_jax.convert import main as convert_main  # noqa: E402
from tests.training_helpers.torch_models import random_torchvision_model  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SPINAL_SHARED", REPO.parent / "shared"))
CIFAR_TRAIN = SHARED / "data" / "cifar10_jpeg" / "cifar10_jpeg_train.tar.gz"
BATCH = 8
HEAD_KWARGS = {"spinal_width": 16, "spinal_dropout": 0.0, "spinal_bn": True}


# ---------------------------------------------------------------------------------------------------
# Real inputs: torchvision weights converted with the CLI, CIFAR-10 JPEGs in an in-memory pipeline
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(resnet18 .pth file, its converted Orbax checkpoint, the converted variables)."""
    tmp = tmp_path_factory.mktemp("weights")
    model = random_torchvision_model("resnet18")  # BatchNorm statistics away from (0, 1)
    pth = tmp / "resnet18.pth"
    torch.save(model.state_dict(), pth)
    ckpt = tmp / "resnet18_converted"
    assert convert_main([str(pth), str(ckpt), "--arch", "resnet18"]) == 0
    converted, meta = pretrained.load_converted(ckpt)
    assert meta["arch"] == "resnet18"
    return pth, ckpt, jax.tree.map(np.asarray, converted)


@pytest.fixture(scope="module")
def cifar():
    """The first 4 train JPEGs of every CIFAR-10 class (40 images, 32x32), normalised with CIFAR-100
    statistics, as the reference's transfer recipe."""
    from PIL import Image

    if not CIFAR_TRAIN.exists():
        pytest.skip(f"{CIFAR_TRAIN} not found; set SPINAL_SHARED to the shared data folder")
    images: dict[str, list[np.ndarray]] = {}
    with tarfile.open(CIFAR_TRAIN, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and len(images.setdefault(parts[-2], [])) < 4:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    images[parts[-2]].append(np.asarray(im.convert("RGB")))
    classes = sorted(images)
    assert len(classes) == 10 and all(len(images[c]) == 4 for c in classes)
    x = np.stack([im for c in classes for im in images[c]]).astype(np.float32) / 255.0
    mean, std = np.array([0.507, 0.487, 0.441]), np.array([0.267, 0.256, 0.276])
    x = ((x - mean) / std).astype(np.float32)
    y = np.repeat(np.arange(10), 4).astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))  # every batch of 8 mixes classes
    return x[order], y[order]


class _Iterator:
    def __init__(self, pipe):
        self.pipe, self.step = pipe, 0

    def __next__(self):
        batch = self.pipe.batch(self.step)
        self.step += 1
        return batch

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = int(state["step"])


class JpegPipeline:
    """The spinal_jax.data interface over in-memory images. Training runs get no validation/test split
    (no evaluation); ``n_test > 0`` adds a test split of the first ``n_test`` images (for
    spinal_jax.evaluate). ``same_batch``: every step trains on the first batch (to watch its loss fall)."""

    num_classes = 10
    image_shape = (32, 32, 3)
    device_augment = None

    def __init__(self, x, y, same_batch: bool = False, n_test: int = 0):
        self.x, self.y, self.same_batch = x, y, same_batch
        self.global_batch_size = BATCH
        self.steps_per_epoch = len(y) // BATCH
        self.num_examples = {"train": len(y), "validation": 0, "test": n_test}

    def _shard(self, sl: slice) -> dict[str, np.ndarray]:
        devices = jax.local_device_count()
        return {
            "image": self.x[sl].reshape(devices, -1, *self.image_shape),
            "label": self.y[sl].reshape(devices, -1),
        }

    def batch(self, step: int) -> dict[str, np.ndarray]:
        k = 0 if self.same_batch else step % self.steps_per_epoch
        return self._shard(slice(k * BATCH, (k + 1) * BATCH))

    def train_iterator(self):
        return _Iterator(self)

    def eval_batches(self, split):
        assert split == "test" and self.num_examples["test"] > 0, split
        batch = self._shard(slice(0, self.num_examples["test"]))
        yield {**batch, "mask": np.ones(batch["label"].shape, bool)}


def assert_evaluates(workdir, cifar, step: int) -> None:
    """``python -m spinal_jax.evaluate`` restores the run (its fine-tuning optimiser state layout)."""
    from spinal_jax.evaluate import evaluate_workdir

    result = evaluate_workdir(workdir, "test", which="latest", pipeline=JpegPipeline(*cifar, n_test=BATCH))
    assert result["checkpoint_step"] == step and result["count"] == BATCH
    assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])


def make_config(
    pretrained_path,
    mode: str,
    max_steps: int,
    *,
    optim: str = "sgd",
    lr: float = 0.05,
    model: str = "resnet18",
) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.model.name, c.model.head = model, "spinal"
    c.model.kwargs = ml_collections.ConfigDict(HEAD_KWARGS)
    c.data = config_lib.data_config("mnist", batch_size=BATCH)
    c.num_epochs, c.max_train_steps, c.log_every_steps = 1, max_steps, 1
    c.optim.name, c.optim.learning_rate = optim, lr
    c.optim.momentum = 0.9 if optim == "sgd" else 0.0
    c.optim.eps = 1e-12  # Adam's first step is then lr * sign(g) to float precision
    c.async_checkpoints = False
    c.pretrained = str(pretrained_path)
    c.finetune.mode = mode
    return c


def final_variables(workdir) -> tuple[dict, dict, int]:
    """params, batch_stats and step of the run's latest checkpoint."""
    folder = pathlib.Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(folder / str(step) / "state")
    return state["params"], state["batch_stats"], step


def split_head(tree: dict, head: str = "fc") -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(tree)
    head_part = {k: np.asarray(v) for k, v in flat.items() if k[0] == head}
    backbone = {k: np.asarray(v) for k, v in flat.items() if k[0] != head}
    return head_part, backbone


@pytest.fixture(scope="module")
def fresh_head():
    """The head (params, batch_stats) a run with seed 0 initialises before loading the backbone."""
    config = make_config("unused", "full", 1)
    model = build.build_model(config, 10)
    state = steps.create_train_state(jax.random.PRNGKey(0), model, (32, 32, 3), optax.identity())
    return split_head(state.params)[0], split_head(state.batch_stats)[0]


def _train_losses(workdir) -> list[float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------------
# The three fine-tuning modes
# ---------------------------------------------------------------------------------------------------


def test_linear_probe_keeps_backbone_and_its_batch_stats(weights, cifar, fresh_head, tmp_path):
    _, ckpt, converted = weights
    config = make_config(ckpt, "linear_probe", max_steps=2)
    summary = training.train_and_evaluate(config, tmp_path, pipeline=JpegPipeline(*cifar))
    assert summary["status"] == "finished" and summary["step"] == 2
    params, stats, step = final_variables(tmp_path)
    assert step == 2
    head, backbone = split_head(params)
    head_stats, backbone_stats = split_head(stats)
    want_params = split_head(converted["params"])[1]
    want_stats = split_head(converted["batch_stats"])[1]
    # Backbone parameters and BatchNorm statistics: bit-identical to the converted ones after 2 steps.
    assert backbone.keys() == want_params.keys() and len(backbone) == 60
    assert backbone_stats.keys() == want_stats.keys() and len(backbone_stats) == 40
    for key in want_params:
        np.testing.assert_array_equal(backbone[key], want_params[key], err_msg=str(key))
    for key in want_stats:
        np.testing.assert_array_equal(backbone_stats[key], want_stats[key], err_msg=str(key))
    # The head (10 classes, spinal with BN) trained: parameters and its own statistics moved.
    assert head[("fc", "readout", "kernel")].shape == (4 * 16, 10)
    assert head.keys() == fresh_head[0].keys() and head_stats.keys() == fresh_head[1].keys()
    for key, value in fresh_head[0].items():
        assert not np.array_equal(head[key], value), key
    for key, value in fresh_head[1].items():
        assert not np.array_equal(head_stats[key], value), key
    assert_evaluates(tmp_path, cifar, step=2)


def test_separate_lr_scales_the_backbone_update(weights, cifar, fresh_head, tmp_path):
    """One Adam step moves a parameter by lr * |g| / |g| = lr where its gradient is not 0: lr on the head,
    lr * 0.1 on the backbone, measured from the converted backbone (so it was loaded exactly) and the
    fresh head."""
    _, ckpt, converted = weights
    config = make_config(ckpt, "separate_lr", max_steps=1, optim="adam", lr=1e-3)
    config.finetune.backbone_lr_multiplier = 0.1
    training.train_and_evaluate(config, tmp_path, pipeline=JpegPipeline(*cifar))
    params, _, _ = final_variables(tmp_path)
    head, backbone = split_head(params)
    want_backbone = split_head(converted["params"])[1]
    moved_backbone = np.concatenate([np.abs(backbone[k] - want_backbone[k]).ravel() for k in want_backbone])
    moved_head = np.concatenate([np.abs(head[k] - v).ravel() for k, v in fresh_head[0].items()])
    # At 32x32 layer4's maps are 1x1, so only the centre taps of its 3x3 kernels get a gradient.
    assert all(np.abs(backbone[k] - want_backbone[k]).max() > 0 for k in want_backbone)
    assert np.mean(moved_backbone > 0) > 0.3 and np.mean(moved_head > 0) > 0.99
    for moved, lr in ((moved_backbone[moved_backbone > 0], 1e-4), (moved_head[moved_head > 0], 1e-3)):
        assert np.median(moved) == pytest.approx(lr, rel=1e-3)
        assert np.mean(np.isclose(moved, lr, rtol=1e-2)) > 0.99
        assert moved.max() < 1.01 * lr
    assert_evaluates(tmp_path, cifar, step=1)


def test_full_finetuning_from_a_pth_file_lowers_the_loss(weights, cifar, fresh_head, tmp_path):
    """The CIFAR-10 transfer recipe (SGD 0.9, StepLR) on a raw .pth file, every layer trained."""
    pth, _, converted = weights
    config = config_lib.transfer_config(
        "cifar10_jpeg", "spinal", "full", spinal_width=16, batch_size=BATCH, num_epochs=1, arch="resnet18"
    )
    config.model.kwargs.spinal_dropout = 0.0
    assert config.model.kwargs.to_dict() == HEAD_KWARGS and config.seed == 0  # fresh_head's model and seed
    config.optim.learning_rate = 0.01
    config.pretrained, config.max_train_steps, config.log_every_steps = str(pth), 2, 1
    config.async_checkpoints = False
    training.train_and_evaluate(config, tmp_path, pipeline=JpegPipeline(*cifar, same_batch=True))
    losses = _train_losses(tmp_path)  # of the same batch, before steps 1 and 2
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    assert losses[1] < losses[0] - 0.05, losses
    params, stats, _ = final_variables(tmp_path)
    for got, want in ((params, converted["params"]), (stats, converted["batch_stats"])):
        got_backbone, want_backbone = split_head(got)[1], split_head(want)[1]
        assert got_backbone.keys() == want_backbone.keys()
        for key in want_backbone:  # every backbone parameter and statistic moved
            assert not np.array_equal(got_backbone[key], want_backbone[key]), key
    head = split_head(params)[0]  # and the head (the same model and seed as fresh_head's)
    assert head.keys() == fresh_head[0].keys()
    for key, value in fresh_head[0].items():
        assert not np.array_equal(head[key], value), key


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------


def test_missing_pretrained_file_names_the_fix(cifar, tmp_path):
    config = make_config(tmp_path / "nowhere", "full", max_steps=1)
    with pytest.raises(
        FileNotFoundError, match=r"config.pretrained='.*nowhere' does not exist.*spinal_jax.convert"
    ):
        training.train_and_evaluate(config, tmp_path / "run", pipeline=JpegPipeline(*cifar))


@pytest.mark.parametrize("which", ["orbax", "pth"])
def test_weights_of_another_arch_name_the_fix(weights, which):
    pth, ckpt, _ = weights
    config = make_config(ckpt if which == "orbax" else pth, "full", 1, model="resnet34")
    model = build.build_model(config, 10)
    state = jax.eval_shape(
        lambda: steps.create_train_state(jax.random.PRNGKey(0), model, (32, 32, 3), optax.identity())
    )
    detail = (
        "holds 'resnet18' weights, but the model is 'resnet34'"
        if which == "orbax"
        else r"does not fit 'resnet34'.*The file matches 'resnet18'"
    )
    with pytest.raises(pretrained.StateDictMismatchError) as info:
        finetune.load_pretrained_state(config, model, state)
    message = str(info.value)
    prefix = f"config.pretrained={str(config.pretrained)!r} does not fit config.model.name='resnet34': "
    assert message.startswith(prefix), message
    assert re.search(detail, message, flags=re.S), message
    assert "Fix: set --config.model.name to the architecture of the weights" in message


def test_linear_probe_state_survives_a_checkpoint_round_trip(weights, tmp_path):
    """The linear-probe TrainState (its head name is static) saves and restores like the plain one."""
    from spinal_jax import checkpoints

    _, ckpt, _ = weights
    config = make_config(ckpt, "linear_probe", 1)
    model = build.build_model(config, 10)
    tx = finetune.create_optimizer(config, 0.1)
    state = finetune.adapt_train_state(
        config, steps.create_train_state(jax.random.PRNGKey(0), model, (32, 32, 3), tx)
    )
    state = finetune.load_pretrained_state(config, model, state)
    assert type(state).__name__ == "LinearProbeTrainState" and state.head == "fc"
    manager = checkpoints.Checkpoints(tmp_path, use_async=False)
    manager.save(0, state, {"step": 0}, {"step": 0})
    restored, _, _, _ = manager.restore(state)
    manager.close()
    assert type(restored) is type(state) and restored.head == "fc"
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restored.batch_stats, state.batch_stats)
