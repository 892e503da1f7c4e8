"""2 processes x 2 CPU devices (JAX's distributed runtime on 127.0.0.1, gloo collectives) train to the
same parameters as 1 process x 4 devices, through the whole loop: sharded input, pmapped steps,
cross-process BatchNorm and evaluation, and a multi-process Orbax checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARGS = ["n_train=640", "n_val=96", "n_test=96", "batch=32", "epochs=1", "max_steps=6", "ckpt_every=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "tests.training_helpers.run_loop", str(workdir), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _params(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "final_params.npz") as f:
        return dict(f)


def test_two_processes_match_one_process_with_four_devices(tmp_path):
    """The 2-process run is also stopped by a SIGTERM sent to process 1 only: both processes agree to
    stop at the next agreement step (5), save collectively, and a rerun of both finishes the run."""
    single = _start(tmp_path / "single", "devices=4")
    port = _free_port()
    multi_args = ["devices=2", f"coordinator=127.0.0.1:{port}", "nproc=2"]
    multi = [_start(tmp_path / "multi", *multi_args, f"pid={i}", "sleep=0.2") for i in range(2)]
    for line in multi[1].stdout:
        if "STEP 2\n" in line:
            multi[1].send_signal(signal.SIGTERM)
            break
    stopped = [_finish(p) for p in multi]
    first = [_summary(out) for out in stopped]
    assert [s["status"] for s in first] == ["interrupted", "interrupted"]
    assert [s["step"] for s in first] == [5, 5]

    port = _free_port()
    multi_args = ["devices=2", f"coordinator=127.0.0.1:{port}", "nproc=2"]
    multi = [_start(tmp_path / "multi", *multi_args, f"pid={i}") for i in range(2)]
    single_out = _finish(single)
    multi_out = [_finish(p) for p in multi]
    assert "DEVICES 1x4" in single_out
    assert all("DEVICES 2x2" in out for out in multi_out)

    summaries = [_summary(o) for o in [single_out, *multi_out]]
    assert all(s["step"] == 6 and s["status"] == "finished" for s in summaries)
    untimed = [{k: v for k, v in s.items() if k != "train_seconds_total"} for s in summaries]
    assert untimed[1] == untimed[2]  # both processes saw the same global metrics

    chex.assert_trees_all_close(
        _params(tmp_path / "multi"), _params(tmp_path / "single"), rtol=1e-6, atol=1e-6
    )
    saved = sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [5, 6]


def _summary(out: str) -> dict:
    return json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
