"""Kill-and-resume: an interrupted run (SIGTERM mid-epoch, or SIGKILL) resumed from its workdir ends
with exactly the parameters of an uninterrupted run. Real subprocesses, real Orbax checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["n_train=640", "n_val=100", "n_test=100", "batch=32", "epochs=2", "ckpt_every=7"]  # 20 steps/epoch


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return env


def _run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.training_helpers.run_loop", str(workdir), *ARGS, *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _interrupt(workdir: Path, sig: int, at_step: int, saved_step: int | None = None) -> subprocess.Popen:
    """Start a slowed-down run and send ``sig`` once it asks for the batch of step ``at_step`` and, if
    given, the asynchronous save of ``saved_step`` is finalized (Orbax renames its temporary folder to
    ``checkpoints/<step>`` last; a SIGKILL before that rightly loses the checkpoint)."""
    cmd = [sys.executable, "-m", "tests.training_helpers.run_loop", str(workdir), *ARGS, "sleep=0.05"]
    out = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), **out)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"STEP {at_step}\n" in line or line.endswith(f"STEP {at_step}\n"):
            deadline = time.monotonic() + 120
            while saved_step is not None and not (workdir / "checkpoints" / str(saved_step)).exists():
                assert proc.poll() is None and time.monotonic() < deadline, f"step {saved_step} never saved"
                time.sleep(0.01)
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=300)
    proc.output = "".join(lines) + rest
    return proc


def _summary(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY ") :])


def _params(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "final_params.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("full")
    proc = _run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    assert summary["status"] == "finished" and summary["step"] == 40 and summary["epochs"] == 2
    return workdir, summary


def test_sigkill_then_sigterm_mid_epoch_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
    """Killed at step 9 or soon after (once the periodic checkpoint of step 7 is on disk), resumed,
    stopped by SIGTERM at step 26 (mid-epoch 2, between periodic saves), resumed again: the same final
    parameters and metrics."""
    full_dir, full_summary = uninterrupted
    killed = _interrupt(tmp_path, signal.SIGKILL, at_step=9, saved_step=7)
    assert killed.returncode == -signal.SIGKILL

    stopped = _interrupt(tmp_path, signal.SIGTERM, at_step=26)
    assert stopped.returncode == 0, stopped.output[-3000:]
    assert "Resumed from" in stopped.output
    first = _summary(stopped.output)
    assert first["status"] == "interrupted"
    assert 26 <= first["step"] < 40
    assert not (tmp_path / "summary.json").exists()

    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"/checkpoints/{first['step']} (epoch 1)" in resumed.stderr
    summary = _summary(resumed.stdout)
    assert summary["status"] == "finished" and summary["step"] == 40
    chex.assert_trees_all_equal(_params(tmp_path), _params(full_dir))
    for key in ("best_validation_accuracy", "test_at_best_validation", "max_test_over_epochs"):
        assert summary[key] == full_summary[key], key


def _train_py(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "--config=configs/mnist_cnn.py", f"--workdir={workdir}",
        "--config.max_train_steps=40", "--config.checkpoint_every_steps=10", "--config.data.batch_size=128",
        "--config.log_every_steps=1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_py_on_the_real_pipeline_resumes_exactly_after_sigterm(tmp_path):
    """``python train.py`` on real MNIST through spinal_jax.data: SIGTERM once step 10 is saved, rerun,
    and the parameters at step 40 equal those of an uninterrupted run (data position included)."""
    from spinal_jax.checkpoints import final_params

    full = subprocess.run(_train_py(tmp_path / "full"), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]

    workdir = tmp_path / "cut"
    proc = subprocess.Popen(_train_py(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (workdir / "checkpoints" / "10").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    first = json.loads(out[out.index("{") :])
    assert first["status"] == "interrupted" and 10 <= first["step"] < 40, first

    resumed = subprocess.run(
        _train_py(workdir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {workdir}/checkpoints/{first['step']}" in resumed.stderr
    chex.assert_trees_all_equal(final_params(workdir), final_params(tmp_path / "full"))
