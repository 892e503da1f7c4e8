"""Seeds in parallel (``config.num_seeds``): S models trained in one program, each the model a run of
its seed alone trains, each with its own workdir, checkpoints and exact resume.

Real MNIST through the real input pipeline, cut to 640 train / 128 validation / 128 test examples,
the MNIST CNN with the spinal head (dropout in its head, device augmentation), batch 64: 10 steps per
epoch, 2 epochs. Replica ``r`` of a run with ``seed=3`` is compared with a run of ``seed=data.seed=3+r``
alone.

The runs here use jax's default generator, ``threefry2x32`` (the rest of the suite runs with ``rbg``,
see conftest.py): threefry draws the same bits for a key inside ``jax.vmap`` as outside, so a replica's
initialisation, dropout masks and augmentation are its solo run's. ``rbg`` draws other bits under
``vmap`` (measured: 3e-3 apart after 20 steps), so with it replicas are independent seeds but not
their solo runs.

A replica is not bit-identical to its solo run: ``jax.vmap`` over the seed axis turns each convolution
and matmul into a batched one, which XLA sums in another order. Measured on the 2-core CPU machine
(jax 0.10.2) after 20 steps: at most 1.5e-8 apart on any parameter, every recorded accuracy and loss
equal. The bound below, 1e-6 absolute on weights of order 0.1 to 1, is a few float32 rounding steps
per update over 20 updates; a replica trained on another replica's seed, data or dropout differs by
orders of magnitude more (asserted too).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from spinal_jax import checkpoints, training
from spinal_jax import config as config_lib
from spinal_jax.errors import UserError
from tests.training_helpers.small_pipeline import SmallPipeline, mnist_data_config

SIZES = {"train": 640, "validation": 128, "test": 128}
SEED = 3
PARAM_ATOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _threefry():
    with jax.default_prng_impl("threefry2x32"):
        yield


def _config(seed: int, num_seeds: int, resident: bool, **fields) -> config_lib.ml_collections.ConfigDict:
    """Host runs checkpoint at step 13 too (mid-epoch 2), so the stopped-and-resumed run below has the
    uninterrupted run's config; device-resident runs checkpoint at epoch ends only."""
    config = config_lib.load_config_file("configs/mnist_cnn.py:spinal")
    config.data = mnist_data_config(batch_size=64, device_resident=resident, seed=seed)
    config.num_epochs = 2
    config.seed = seed
    config.num_seeds = num_seeds
    config.tensorboard = False
    config.log_every_steps = 5
    config.checkpoint_every_steps = 0 if resident else 13
    config.update(fields)
    return config


def _train(workdir: Path, config) -> dict:
    return training.train_and_evaluate(config, workdir, pipeline=SmallPipeline(config.data, SIZES))


def _params(workdir: Path) -> dict[str, np.ndarray]:
    params = checkpoints.final_params(workdir)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


def _history(workdir: Path) -> list[dict]:
    history = json.loads((workdir / "summary.json").read_text())["history"]
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module", params=[False, True], ids=["host_pipeline", "device_resident"])
def runs(request, tmp_path_factory) -> dict:
    """A 2-seed run (seeds 3 and 4) and the solo runs of seeds 3 and 4, with the same data mode."""
    resident = request.param
    root = tmp_path_factory.mktemp("resident" if resident else "host")
    summary = _train(root / "pair", _config(SEED, 2, resident))
    for seed in (SEED, SEED + 1):
        _train(root / f"solo{seed}", _config(seed, 1, resident))
    return {"root": root, "summary": summary, "resident": resident}


def test_each_replica_trains_the_model_of_its_seed_alone(runs):
    root = runs["root"]
    assert runs["summary"]["status"] == "finished" and runs["summary"]["step"] == 20
    assert [r["seed"] for r in runs["summary"]["replicas"]] == [SEED, SEED + 1]
    for seed in (SEED, SEED + 1):
        replica, solo = root / "pair" / f"seed{seed}", root / f"solo{seed}"
        assert _max_diff(_params(replica), _params(solo)) < PARAM_ATOL, seed
        mine, alone = _history(replica), _history(solo)
        assert [h["epoch"] for h in mine] == [h["epoch"] for h in alone] == [1, 2]
        for a, b in zip(mine, alone, strict=True):
            for split, n in (("validation", SIZES["validation"]), ("test", SIZES["test"])):
                assert abs(a[f"{split}_accuracy"] - b[f"{split}_accuracy"]) <= 1 / n, (seed, a, b)
                np.testing.assert_allclose(a[f"{split}_loss"], b[f"{split}_loss"], rtol=1e-5)
            np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    # The replicas are independent models: seed 3 against seed 4 is far outside the bound.
    assert _max_diff(_params(root / "solo3"), _params(root / "pair" / "seed4")) > 1e3 * PARAM_ATOL


def test_each_replica_directory_is_a_run_of_its_seed(runs):
    """``seed<k>/`` holds what a run of seed k alone writes: its config (seed k, data seed k, one seed),
    metrics with each (step, kind) row once, summary and checkpoints."""
    pair = runs["root"] / "pair"
    assert json.loads((pair / "config.json").read_text())["num_seeds"] == 2
    for seed in (SEED, SEED + 1):
        replica = pair / f"seed{seed}"
        stored = json.loads((replica / "config.json").read_text())
        assert (stored["seed"], stored["data"]["seed"], stored["num_seeds"]) == (seed, seed, 1)
        rows = [json.loads(line) for line in (replica / "metrics.jsonl").read_text().splitlines()]
        keys = [(row["step"], row["kind"]) for row in rows]
        assert len(keys) == len(set(keys)) and ("epoch" in {k for _, k in keys})
        assert json.loads((replica / "summary.json").read_text())["status"] == "finished"
        assert sorted(int(p.name) for p in (replica / "checkpoints").iterdir() if p.name.isdigit())[-1] == 20


def test_evaluate_reads_a_replica_directory_and_names_them_for_the_shared_one(runs):
    """``spinal_jax.evaluate`` on ``seed<k>/`` gives the replica's last recorded test results; on the
    shared workdir it stops with one message naming the replica folders."""
    from spinal_jax import evaluate

    pair = runs["root"] / "pair"
    last = _history(pair / f"seed{SEED + 1}")[-1]
    result = evaluate.evaluate_workdir(
        pair / f"seed{SEED + 1}",
        "test",
        "latest",
        pipeline=SmallPipeline(_config(SEED + 1, 1, False).data, SIZES),
    )
    assert result["checkpoint_step"] == 20 and result["count"] == SIZES["test"]
    # The same weights, evaluated alone instead of vmapped beside the other replica: float32 rounding.
    assert abs(result["accuracy"] - last["test_accuracy"]) <= 1 / SIZES["test"]
    np.testing.assert_allclose(result["loss"], last["test_loss"], rtol=1e-5)
    with pytest.raises(UserError, match=f"seed{SEED}, seed{SEED + 1}"):
        evaluate.evaluate_workdir(pair, "test", "latest")


def test_resume_is_exact_even_when_the_replicas_stopped_at_different_steps(runs, tmp_path):
    """A 2-seed run stopped, then replica 1's last checkpoint removed, as if the run had been killed
    between the two replicas' saves: host pipeline, stopped at step 13 (mid-epoch 2), both resume from
    step 10; device-resident, stopped at step 10 (epoch ends only), replica 1 has no checkpoint left, so
    both start again. Both replicas end with exactly the parameters and records of the uninterrupted
    2-seed run."""
    resident = runs["resident"]
    cut = _train(tmp_path, _config(SEED, 2, resident, max_train_steps=10 if resident else 13))
    assert cut["step"] == (10 if resident else 13)
    shutil.rmtree(tmp_path / f"seed{SEED + 1}" / "checkpoints" / str(cut["step"]))
    _train(tmp_path, _config(SEED, 2, resident))
    for seed in (SEED, SEED + 1):
        resumed, full = tmp_path / f"seed{seed}", runs["root"] / "pair" / f"seed{seed}"
        assert _max_diff(_params(resumed), _params(full)) == 0.0, seed
        assert _history(resumed) == _history(full), seed
        rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
        assert len({(r["step"], r["kind"]) for r in rows}) == len(rows)


def test_time_to_accuracy_of_several_seeds_reports_each_replica(tmp_path):
    """``bench --modes tta --config.num_seeds=2``: one record with each replica's figures, read from its
    own summary, and the slowest replica's time to the target at the top."""
    from spinal_jax import bench

    config = _config(SEED, 2, True, num_epochs=1)
    record = bench.time_to_accuracy(config, 0.0, workdir=tmp_path, pipeline=SmallPipeline(config.data, SIZES))
    assert record["num_seeds"] == 2 and len(record["replicas"]) == 2
    for seed, figures in zip((SEED, SEED + 1), record["replicas"], strict=True):
        history = json.loads((tmp_path / f"seed{seed}" / "summary.json").read_text())["history"]
        assert figures["test_accuracy_per_epoch"] == [h["test_accuracy"] for h in history]
        assert figures["epochs_to_target"] == 1
    assert record["seconds_to_target"] == max(f["seconds_to_target"] for f in record["replicas"])
    assert "2 seeds" in bench.describe(record)


def test_num_seeds_below_one_is_refused():
    config = _config(SEED, 0, False)
    with pytest.raises(UserError, match="num_seeds must be > 0"):
        config_lib.validate_config(config)
