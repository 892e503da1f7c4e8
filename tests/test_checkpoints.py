"""Orbax checkpoints: exact round trip, fallback from a truncated / partial latest checkpoint, warm start."""

from __future__ import annotations

import functools
import shutil
import warnings
from pathlib import Path

import chex
import jax
import ml_collections
import numpy as np
import pytest

from spinal_jax import checkpoints, optim, steps
from spinal_jax.errors import UserError
from tests.training_helpers.tiny_model import TinyBNNet

OPTIM = ml_collections.ConfigDict(
    dict(name="adam", momentum=0.0, nesterov=False, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8)
)


@functools.cache
def _initial(num_classes: int) -> steps.TrainState:
    tx = optim.create_optimizer(OPTIM, 1e-3)
    return steps.create_train_state(jax.random.PRNGKey(0), TinyBNNet(num_classes), (28, 28, 1), tx)


def _state(seed: int, num_classes: int = 10) -> steps.TrainState:
    """A distinct state per seed: every array leaf shifted by ``seed`` (one model compile for all)."""
    state = _initial(num_classes)
    shift = lambda tree: jax.tree.map(lambda x: x + np.asarray(seed, x.dtype), tree)  # noqa: E731
    return state.replace(
        params=shift(state.params), batch_stats=shift(state.batch_stats), opt_state=shift(state.opt_state)
    )


def _saved(workdir: Path) -> tuple[checkpoints.Checkpoints, list[steps.TrainState]]:
    ckpt = checkpoints.Checkpoints(workdir, keep=3)
    states = [_state(i).replace(step=np.int32(10 * (i + 1))) for i in range(3)]
    for i, state in enumerate(states):
        ckpt.save(10 * (i + 1), state, {"position": i}, {"step": 10 * (i + 1)}, best=i == 1)
    ckpt.wait()
    return ckpt, states


def test_round_trip_is_exact(tmp_path):
    ckpt, states = _saved(tmp_path)
    state, data, loop, step = ckpt.restore(_state(99))
    assert (step, data, loop) == (30, {"position": 2}, {"step": 30})
    chex.assert_trees_all_equal(steps_tree(state), steps_tree(states[2]))
    best = ckpt.restore(_state(99), which="best")
    assert best[3] == 20
    chex.assert_trees_all_equal(best[0].params, states[1].params)


def steps_tree(state):
    return {
        "params": state.params,
        "opt": state.opt_state,
        "bn": state.batch_stats,
        "rng": state.rng,
        "step": state.step,
    }


def _damaged_folders(workdir: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in (workdir / checkpoints.DAMAGED).iterdir())


def test_truncated_latest_is_moved_aside_and_the_retrained_step_saved_in_its_place(tmp_path):
    ckpt, states = _saved(tmp_path)
    data_files = [
        p
        for p in (tmp_path / "checkpoints" / "30" / "state").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(7)
    ckpt = checkpoints.Checkpoints(tmp_path, keep=3)
    with pytest.warns(RuntimeWarning, match=r"checkpoints/30 is damaged .*moved to .*falling back"):
        state, data, _, step = ckpt.restore(_state(99))
    assert (step, data) == (20, {"position": 1})
    chex.assert_trees_all_equal(state.params, states[1].params)
    assert _damaged_folders(tmp_path) == ["checkpoints-30"]
    assert ckpt.latest.all_steps() == [10, 20]

    ckpt.save(30, states[2], {"position": 2}, {"step": 30})  # the retrained step takes its place
    ckpt.wait()
    assert checkpoints.verify(tmp_path / "checkpoints" / "30") is None
    assert checkpoints.Checkpoints(tmp_path).restore(_state(99))[3] == 30


def test_partial_latest_falls_back_and_all_unreadable_gives_none(tmp_path):
    _saved(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "30" / "state")  # a checkpoint missing its state item
    with pytest.warns(RuntimeWarning, match=r"checkpoints/30 is damaged \(files differ .*missing"):
        assert checkpoints.Checkpoints(tmp_path).restore(_state(99))[3] == 20
    for step in ("10", "20"):
        (tmp_path / "checkpoints" / step / "loop" / "metadata").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="checkpoints/10 is damaged"):
        assert checkpoints.Checkpoints(tmp_path).restore(_state(99)) is None
    assert _damaged_folders(tmp_path) == ["checkpoints-10", "checkpoints-20", "checkpoints-30"]


def test_unsealed_checkpoint_is_restored_unverified_then_sealed_and_unsealed_damage_is_caught(tmp_path):
    """No seal: written before checksums existed, or the run stopped between Orbax's rename and the seal.
    Orbax renames a step into place only when it is complete, so it is restored (with a warning) and
    sealed; an unsealed one that does not read is damage."""
    _, states = _saved(tmp_path)
    (tmp_path / "checkpoints" / "30" / checkpoints.SEAL).unlink()
    with pytest.warns(RuntimeWarning, match=r"checkpoints/30 is restored unverified"):
        state, _, _, step = checkpoints.Checkpoints(tmp_path).restore(_state(99))
    assert step == 30 and checkpoints.verify(tmp_path / "checkpoints" / "30") is None
    chex.assert_trees_all_equal(state.params, states[2].params)
    (tmp_path / "checkpoints" / "30" / checkpoints.SEAL).unlink()
    shutil.rmtree(tmp_path / "checkpoints" / "30" / "state")
    with pytest.warns(RuntimeWarning, match=r"checkpoints/30 is damaged"):
        assert checkpoints.Checkpoints(tmp_path).restore(_state(99))[3] == 20


def test_readers_skip_damage_without_moving_it_and_an_intact_misfit_is_an_error(tmp_path):
    _saved(tmp_path)
    (tmp_path / "checkpoints" / "30" / "loop" / "metadata").write_text("{}")
    reader = checkpoints.Checkpoints(tmp_path, use_async=False, read_only=True)
    with pytest.warns(RuntimeWarning, match=r"checkpoints/30 is damaged .*skipped"):
        assert reader.restore(_state(99))[3] == 20
    assert (tmp_path / "checkpoints" / "30").is_dir() and not (tmp_path / checkpoints.DAMAGED).exists()
    with pytest.raises(UserError, match=r"checkpoints/20 is intact but does not fit this run's model"):
        checkpoints.Checkpoints(tmp_path, read_only=True).restore(_state(99, num_classes=7))
    assert (tmp_path / "checkpoints" / "20").is_dir()


def test_every_bit_flip_and_truncation_of_every_file_is_detected(tmp_path):
    """Each file of a checkpoint, one damage at a time: a flipped bit (in the middle of the file) or a
    truncation to half its length. Every one must be detected (fallback to the previous step), none
    restored silently."""
    pristine = tmp_path / "pristine"
    _saved(pristine)
    step_dir = pristine / "checkpoints" / "30"
    files = sorted(p.relative_to(step_dir) for p in step_dir.rglob("*") if p.is_file())
    kinds = {p.parts[0] for p in files}
    assert {"state", "data", "loop", checkpoints.SEAL} <= kinds, kinds
    cases = 0
    for rel in files:
        if rel.name == checkpoints.SEAL:
            continue
        for damage in ("flip", "truncate"):
            work = tmp_path / f"case{cases}"
            shutil.copytree(pristine, work)
            path = work / "checkpoints" / "30" / rel
            raw = bytearray(path.read_bytes())
            if damage == "flip" and raw:
                raw[len(raw) // 2] ^= 0x10
            else:
                raw = raw[: len(raw) // 2]
            path.write_bytes(bytes(raw))
            with pytest.warns(RuntimeWarning, match="checkpoints/30 is damaged"):
                assert checkpoints.Checkpoints(work).restore(_state(99))[3] == 20, (rel, damage)
            shutil.rmtree(work)
            cases += 1
    assert cases == 2 * (len(files) - 1)


def test_save_stores_a_snapshot_of_the_loop_and_data_states(tmp_path):
    """The loop and data dicts handed to an asynchronous save may change right after it returns (the
    training loop keeps counting); the checkpoint must hold the values at the call."""
    ckpt = checkpoints.Checkpoints(tmp_path, keep=2, use_async=True)
    loop = {"step": 10, "history": [{"epoch": 1}]}
    data = {"position": 10}
    ckpt.save(10, _state(1), data, loop)
    loop["step"] = 12
    loop["history"].append({"epoch": 2})
    data["position"] = 12
    ckpt.wait()
    _, data_back, loop_back, step = checkpoints.Checkpoints(tmp_path).restore(_state(99))
    assert (step, loop_back, data_back) == (10, {"step": 10, "history": [{"epoch": 1}]}, {"position": 10})


def test_steps_past_keep_are_retired_whole_so_a_kill_never_leaves_a_half_deleted_step(tmp_path, monkeypatch):
    """A step past the latest K is renamed into ``retired/`` in one move and removed from there: with
    the removal stopped (as a kill during it would), every numbered folder is still a whole checkpoint
    and the retired one is complete; the next save clears ``retired/``."""
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda *args, **kwargs: None)
    ckpt = checkpoints.Checkpoints(tmp_path, keep=2, use_async=False)
    for step in (10, 20, 30):
        ckpt.save(step, _state(step).replace(step=np.int32(step)), {"position": step}, {"step": step})
    latest = tmp_path / "checkpoints"
    assert sorted(p.name for p in latest.iterdir()) == ["20", "30", checkpoints.RETIRED]
    assert checkpoints.verify(latest / checkpoints.RETIRED / "10") is None
    assert all(checkpoints.verify(latest / name) is None for name in ("20", "30"))
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoints.Checkpoints(tmp_path).restore(_state(99))[3] == 30
    ckpt.save(40, _state(40).replace(step=np.int32(40)), {"position": 40}, {"step": 40})
    assert sorted(p.name for p in latest.iterdir()) == ["30", "40"]


def test_warm_start_takes_params_and_batch_stats_only(tmp_path):
    _, states = _saved(tmp_path)
    fresh = _state(7).replace(step=np.int32(0))
    warm = checkpoints.load_params(tmp_path, fresh)  # a workdir: its best checkpoint (step 20)
    chex.assert_trees_all_equal(warm.params, states[1].params)
    chex.assert_trees_all_equal(warm.batch_stats, states[1].batch_stats)
    chex.assert_trees_all_equal(warm.opt_state, fresh.opt_state)
    assert int(warm.step) == 0
    step_dir = checkpoints.load_params(tmp_path / "checkpoints" / "30", fresh)
    chex.assert_trees_all_equal(step_dir.params, states[2].params)
    with pytest.raises(ValueError, match="do not fit this model"):
        checkpoints.load_params(tmp_path, _state(0, num_classes=7))
    with pytest.raises(UserError, match="holds no checkpoint"):
        checkpoints.load_params(tmp_path / "nowhere", fresh)
