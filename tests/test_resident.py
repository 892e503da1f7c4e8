"""Device-resident data and whole compiled epochs (``data.device_resident``: spinal_jax.resident,
steps.train_epoch / eval_resident) on real MNIST through spinal_jax.data, cut to a few hundred examples.

A scanned epoch is the per-step path over the same batches; the scanned evaluation counts every example
once and equals evaluate(); 2 devices equal 1; train_and_evaluate resumes exactly at epoch boundaries;
nothing recompiles after the first epoch. The runs share the test run's persistent compilation cache
(tests/conftest.py), so each distinct epoch compiles once however many runs use it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from spinal_jax import checkpoints, optim, resident, sources, steps, training
from spinal_jax import config as config_lib
from spinal_jax.data import DataPreparationError, validate_data_config
from tests.training_helpers.bench_tta import SIZES, small_config
from tests.training_helpers.small_pipeline import SmallPipeline, mnist_data_config
from tests.training_helpers.tiny_model import TinyBNNet

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
SPE = SIZES["train"] // BATCH  # 6 steps; the last 8 examples of each epoch's permutation are dropped


@pytest.fixture(scope="module")
def pipe():
    try:
        return SmallPipeline(small_config(1).data, SIZES)
    except DataPreparationError as err:
        pytest.skip(f"MNIST cannot be prepared here: {err}")


def _subprocess_env() -> dict[str, str]:
    """The test run's environment (its compilation cache included) with one device per process."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return env


def _fresh_state(config):
    tx = optim.create_optimizer(config.optim, config.optim.learning_rate)
    return steps.create_train_state(
        jax.random.PRNGKey(config.seed), TinyBNNet(bn_axis_name="batch"), (28, 28, 1), tx
    )


@pytest.fixture(scope="module")
def scanned(pipe):
    """Two scanned epochs (device augmentation on) from a fresh state."""
    state = _fresh_state(small_config(2))
    data = resident.ResidentData(pipe, ("validation", "test"), steps.StepOptions(augment=pipe.device_augment))
    p_state = steps.on_devices(jax_utils.replicate(state))
    data.compile(p_state)
    metrics = []
    for epoch in range(2):
        p_state, m = data.train_epoch(p_state, epoch)
        metrics.append(jax.device_get(m))
    return {"data": data, "initial": state, "p_state": p_state, "metrics": metrics}


def test_scanned_epoch_equals_train_step_per_batch(pipe, scanned):
    """Two compiled epochs = train_step called per batch on the same permuted batches (augmentation and
    its per-step keys included)."""
    assert pipe.device_augment is not None and pipe.steps_per_epoch == SPE
    images, labels = pipe.device_split("train", normalize=False)
    assert images.dtype == np.uint8 and images.shape == (SIZES["train"], 28, 28, 1)
    data = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    norm = dict(mean=tuple(map(float, pipe.mean)), std=tuple(map(float, pipe.std)))
    gather = jax.jit(functools.partial(steps.epoch_batch, batch_size=BATCH, **norm))
    p_train = steps.pmap_train_step(steps.StepOptions(augment=pipe.device_augment))
    ref = steps.on_devices(jax_utils.replicate(scanned["initial"]))
    perms = []
    for epoch in range(2):
        perm = np.asarray(steps.epoch_permutation(pipe.config.seed, epoch, SIZES["train"]))
        assert sorted(perm.tolist()) == list(range(SIZES["train"]))
        perms.append(perm)
        for k in range(SPE):
            idx = perm[k * BATCH : (k + 1) * BATCH]
            batch = gather(data, perm, np.int32(k * BATCH))
            np.testing.assert_array_equal(batch["label"], labels[idx])
            # uint8 on the device, normalised there: the host pipeline's normalisation.
            np.testing.assert_allclose(batch["image"], pipe.normalize(images[idx]), rtol=1e-6, atol=1e-6)
            ref, m = p_train(ref, jax.tree.map(lambda x: x[None], batch))
            for name in ("loss", "accuracy", "grad_norm", "learning_rate"):
                np.testing.assert_allclose(
                    scanned["metrics"][epoch][name][0, k], m[name][0], rtol=1e-5, atol=1e-6, err_msg=name
                )
    assert not np.array_equal(perms[0], perms[1])  # reshuffled every epoch
    got, want = jax_utils.unreplicate(scanned["p_state"]), jax_utils.unreplicate(ref)
    chex.assert_trees_all_close(got.params, want.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got.batch_stats, want.batch_stats, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(got.rng, want.rng)
    assert int(got.step) == int(want.step) == 2 * SPE
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(*map(jax.tree.leaves, (got.params, scanned["initial"].params)), strict=True)
    ]
    assert max(moved) > 1e-3


def test_scanned_eval_counts_every_example_once_and_equals_evaluate(pipe, scanned):
    """validation (150) and test (130) resident together, padded to 300 rows: the same sums as
    sources.evaluate_pipeline over the host pipeline's padded eval batches."""
    data, p_state = scanned["data"], scanned["p_state"]
    split_ids = np.asarray(data.eval_data["split"]).reshape(-1)
    assert np.bincount(split_ids + 1).tolist() == [20, 150, 130]
    [results] = data.evaluate(p_state)
    assert set(results) == {"validation", "test"}
    for split in ("validation", "test"):
        host = sources.evaluate_pipeline(steps.pmap_eval_step(), p_state, pipe, split)
        mine = results[split]
        assert mine["count"] == host["count"] == SIZES[split]
        assert mine["accuracy"] == host["accuracy"] and mine["top5"] == host["top5"], (mine, host)
        np.testing.assert_allclose(mine["loss"], host["loss"], rtol=1e-5)
        assert 0.1 < mine["accuracy"] < 1.0


def test_nothing_recompiles_after_the_first_epoch(pipe, scanned):
    """Epochs, evaluation and a plateau learning-rate change reuse the ahead-of-time compiled executables
    (no tracing, compilation or cache lookup): a recompiled VGG epoch costs tens of seconds on a GPU."""
    data = scanned["data"]
    p_state = steps.on_devices(jax_utils.replicate(scanned["initial"]))
    data.compile(p_state)
    events: list[str] = []
    record = lambda name, *args, **kw: events.append(name)  # noqa: E731
    jax.monitoring.register_event_listener(record)
    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        p_state, _ = data.train_epoch(p_state, 0)
        data.evaluate(p_state)
        p_state = p_state.replace(opt_state=optim.set_learning_rate(p_state.opt_state, 1e-4))
        p_state = steps.on_devices(p_state)  # outside the counted calls below
        events.clear()
        p_state, metrics = data.train_epoch(p_state, 1)
        data.evaluate(p_state)
        jax.block_until_ready(metrics)
    finally:
        jax.monitoring.unregister_event_listener(record)
        jax.monitoring.unregister_event_duration_listener(record)
    assert not [e for e in events if "compil" in e or "trace" in e or "cache" in e], events
    np.testing.assert_allclose(metrics["learning_rate"], 1e-4)


def test_two_devices_equal_one():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.training_helpers.resident_devices", "2"],
        cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK resident equivalence on 2 devices" in proc.stdout


def _history(workdir: Path) -> list[dict]:
    return json.loads((workdir / "summary.json").read_text())["history"]


def test_train_and_evaluate_resident_checkpoints_and_resumes_exactly(pipe, tmp_path):
    """2 epochs, then the same workdir with num_epochs=3 (resumed from the epoch-2 checkpoint) = 3 epochs
    uninterrupted: the same parameters, bit for bit, and the same accuracies (plateau rule on)."""
    model = TinyBNNet(bn_axis_name="batch")
    cut, full = tmp_path / "cut", tmp_path / "full"
    first = training.train_and_evaluate(small_config(2), cut, pipeline=pipe, model=model)
    assert first["status"] == "finished" and first["step"] == 2 * SPE and first["epochs"] == 2
    assert sorted(int(p.name) for p in (cut / "checkpoints").iterdir()) == [SPE, 2 * SPE]
    assert list((cut / "best").iterdir()) and (cut / "learning_curves.png").exists()
    for i, record in enumerate(_history(cut), start=1):
        assert record["epoch"] == i and record["step"] == i * SPE
        assert record["epoch_seconds"] > 0 and record["compile_seconds"] > 0
        assert (
            0 < record["train_seconds_total"]
            and "validation_accuracy" in record
            and "test_accuracy" in record
        )
    h = _history(cut)
    assert h[1]["train_seconds_total"] == pytest.approx(h[0]["train_seconds_total"] + h[1]["epoch_seconds"])
    assert first["compile_seconds"] == h[0]["compile_seconds"]

    resumed = training.train_and_evaluate(small_config(3), cut, pipeline=pipe, model=model)
    uninterrupted = training.train_and_evaluate(small_config(3), full, pipeline=pipe, model=model)
    assert resumed["step"] == uninterrupted["step"] == 3 * SPE and resumed["epochs"] == 3
    chex.assert_trees_all_equal(checkpoints.final_params(cut), checkpoints.final_params(full))
    for key in ("best_validation_accuracy", "test_at_best_validation", "max_test_over_epochs", "best_epoch"):
        assert resumed[key] == uninterrupted[key], key
    cut_history, full_history = _history(cut), _history(full)
    for a, b in zip(cut_history, full_history, strict=True):
        for key in ("train_loss", "learning_rate", "validation_accuracy", "test_accuracy", "test_loss"):
            assert a[key] == b[key], (key, a, b)
    # The resumed run carried the training clock over.
    assert cut_history[2]["train_seconds_total"] > cut_history[1]["train_seconds_total"]


def test_checkpoint_every_epochs_holds_the_best_epoch_for_the_next_save(pipe, tmp_path):
    config = small_config(3)
    config.checkpoint_every_epochs = 2
    summary = training.train_and_evaluate(
        config, tmp_path, pipeline=pipe, model=TinyBNNet(bn_axis_name="batch")
    )
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2 * SPE, 3 * SPE]
    best = [int(p.name) for p in (tmp_path / "best").iterdir()]
    assert best == [summary["best_epoch"] * SPE], (best, summary)


def test_bench_time_to_accuracy_without_tensorflow_tensorboardx_or_torch(pipe):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.training_helpers.bench_tta", "0.3"],
        cwd=REPO, env=_subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("TTA "))[4:])
    assert record["kind"] == "time_to_accuracy" and record["device_resident"] and record["epochs"] == 3
    assert record["compile_s"] > 0 and record["epochs_to_target"] is not None
    assert 0 < record["seconds_to_target"] <= record["train_seconds_total"] < record["wall_s"]
    accuracies = record["test_accuracy_per_epoch"]
    assert (
        accuracies[record["epochs_to_target"] - 1]
        >= 0.3
        > max([0.0, *accuracies[: record["epochs_to_target"] - 1]])
    )
    assert record["max_test_accuracy"] == max(accuracies) == record["max_test_over_epochs"]


def test_bad_configs_are_refused(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"data\.device_resident=True .* data\.augment_on='device'"):
        validate_data_config(mnist_data_config(augment_on="host"))
    config = small_config(2)
    config.data.augment_on = "host"
    with pytest.raises(ValueError, match=r"augment_on='device'"):
        training.train_and_evaluate(config, tmp_path / "host_augment")
    config = small_config(2)
    config.max_train_steps = SPE + 1
    with pytest.raises(ValueError, match=rf"multiple of the {SPE} steps per epoch"):
        training.train_and_evaluate(config, tmp_path / "partial", pipeline=pipe, model=TinyBNNet())


def test_fast_config_is_the_reference_protocol_on_the_device():
    spec = REPO / "configs" / "mnist_vgg5_fast.py"
    from spinal_jax import bench

    config = bench.load_config(f"{spec}:bf16")
    config_lib.validate_config(config)
    assert (config.model.name, config.model.head, config.dtype) == ("vgg5", "spinal", "bfloat16")
    assert config.data.device_resident and config.data.augment_on == "device"
    assert (config.data.batch_size, config.num_epochs, config.optim.name) == (100, 200, "adam")
    assert config.optim.learning_rate == 0.005 and config.plateau.enabled and config.plateau.power == 3.0
    paper = bench.load_config(f"{spec}:paper,default")
    assert paper.data.validation_fraction == 0.0 and paper.plateau.monitor == "test"
    assert paper.model.head == "default" and paper.dtype == "float32"
    with pytest.raises(ValueError, match="'cpu'"):
        bench.load_config(f"{spec}:cpu")
