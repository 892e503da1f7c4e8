"""What a hostile user can do to a run: SIGKILL it at any moment (the kill drill on real MNIST), hand
it bad input (one line naming the problem and the fix, exit status 2, no traceback, nothing written),
start a second trainer on the same workdir, or resume it many times (metrics rows once, timing kept)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from spinal_jax import config as config_lib
from spinal_jax import training
from spinal_jax import workdir as workdir_lib
from spinal_jax.errors import UserError
from tests.training_helpers.array_pipeline import ArrayPipeline
from tests.training_helpers.tiny_model import TinyBNNet

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_kill_drill_ten_sigkills_all_resume_bit_exact(tmp_path):
    """``python -m spinal_jax.drill``: 10 SIGKILLs at random moments after a checkpoint exists (during
    saves, right after, between), each followed by a rerun; every sealed checkpoint stores the step its
    folder names, and every round ends with the reference run's state, byte for byte."""
    cmd = [sys.executable, "-m", "spinal_jax.drill", "--kills=10", f"--workdir={tmp_path}", "--seed=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "10/10 kills resumed bit-exact", proc.stdout
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert rounds and all(line.endswith("final state bit-exact") for line in rounds)
    assert sum(int(line.split(": ")[1].split()[0]) for line in rounds) == 10


def _train_py(workdir: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", "--config=configs/mnist_cnn.py", f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=600)


def _one_message(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single stderr line of a refused run, which must hold every needle."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


BAD_FLAGS = {
    "batch not dividing the devices": (
        ["--config.data.batch_size=30"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        ["batch_size=30", "4 devices", "--config.data.batch_size=32"],
    ),
    "batch size 0": (["--config.data.batch_size=0"], {}, ["batch_size=0", "positive multiple"]),
    "unknown model": (["--config.model.name=resnet9000"], {}, ["'resnet9000'", "mnist_cnn"]),
    "unknown data set": (["--config.data.name=mnistt"], {}, ["'mnistt'", "did you mean 'mnist'"]),
    "missing data files": (
        ["--config.data.name=quickdraw", "--config.data.manual_dir=/nonexistent/qd",
         "--config.data.data_dir=DATA"],
        {}, ["/nonexistent/qd", "does not exist", "data.manual_dir"],
    ),
    "bad config argument": ([], {}, ["'nosuch'", "head: default | spinal"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_input_gives_one_message_and_writes_nothing(case, tmp_path):
    flags, env, needles = BAD_FLAGS[case]
    flags = [f.replace("DATA", str(tmp_path / "data")) for f in flags]
    workdir = tmp_path / "run"
    if case == "bad config argument":
        cmd = [sys.executable, "train.py", "--config=configs/mnist_cnn.py:nosuch", f"--workdir={workdir}"]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        _one_message(proc, *needles)
    else:
        _one_message(_train_py(workdir, *flags, env=_env(**env)), *needles)
    assert not (workdir / "config.json").exists()  # a corrected rerun is not refused


def test_workdir_that_is_a_file_or_cannot_be_created(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    _one_message(_train_py(afile), str(afile), "is a file")
    assert afile.read_text() == "not a directory"
    _one_message(_train_py(Path("/proc/spinal_run")), "/proc/spinal_run", "cannot be created")


def test_workdir_of_another_config_and_one_held_by_a_live_trainer(tmp_path):
    config = _mnist_config()
    workdir_lib.ensure_writable(tmp_path)
    workdir_lib.prepare_workdir(config, tmp_path)
    _one_message(
        _train_py(tmp_path, "--config.optim.learning_rate=0.5"),
        "optim.learning_rate: 0.01 -> 0.5", "--config.overwrite=True",
    )  # fmt: skip
    with workdir_lib.WorkdirLock(tmp_path):
        _one_message(
            _train_py(tmp_path), "is in use by host", f"pid {os.getpid()}", "one trainer per workdir"
        )


def _mnist_config() -> ml_collections.ConfigDict:
    sys.path.insert(0, str(REPO))
    try:
        from configs import mnist_cnn
    finally:
        sys.path.remove(str(REPO))
    return mnist_cnn.get_config()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / workdir_lib.LOCK_NAME).write_text("host elsewhere, pid 999999")
    with caplog.at_level("WARNING", logger="spinal_jax.workdir"), workdir_lib.WorkdirLock(tmp_path):
        held = (tmp_path / workdir_lib.LOCK_NAME).read_text()
        with pytest.raises(UserError, match=f"in use by host .*pid {os.getpid()}"):
            workdir_lib.WorkdirLock(tmp_path).__enter__()  # a second trainer, even in this process
    assert held.endswith(f"pid {os.getpid()}")
    assert "left by host elsewhere, pid 999999" in caplog.text


def test_evaluate_and_convert_refuse_bad_paths_with_one_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spinal_jax.evaluate", f"--workdir={tmp_path}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _one_message(proc, str(tmp_path), "holds no config.json")


def test_metrics_rows_once_and_train_time_carried_over_resumes(tmp_path):
    """Stopped at step 7 (checkpoint), with a row of step 9 written after it (as before a SIGKILL), then
    resumed to the end of the epoch: each (step, kind) row appears once, and the epoch's
    ``train_seconds_total`` includes the time trained before the stop."""
    config = config_lib.base_config()
    config.data = config_lib.data_config("mnist", batch_size=32)
    config.optim.name, config.optim.learning_rate, config.log_every_steps = "adam", 3e-3, 1
    pipe = lambda: ArrayPipeline(320, 100, 150, 32)  # noqa: E731
    model = TinyBNNet(bn_axis_name="batch")
    config.max_train_steps = 7
    first = training.train_and_evaluate(config, tmp_path, pipeline=pipe(), model=model)
    assert first["step"] == 7 and first["train_seconds_total"] > 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "kind": "train", "loss": 123.0}) + "\n")
    config.max_train_steps = 0
    second = training.train_and_evaluate(config, tmp_path, pipeline=pipe(), model=model)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["kind"]) for r in rows]
    assert len(keys) == len(set(keys)) and [k[0] for k in keys] == sorted(k[0] for k in keys)
    assert [k for k in keys if k[1] == "train"] == [(s, "train") for s in range(1, 11)]
    assert all(r.get("loss") != 123.0 for r in rows)
    epoch = [r for r in rows if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["train_seconds_total"] >= first["train_seconds_total"]
    assert second["train_seconds_total"] >= epoch[0]["train_seconds_total"]
    shutil.rmtree(tmp_path)
