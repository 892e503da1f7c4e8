"""Kill drill: SIGKILL a training run at random moments, rerun it each time, check it ends bit-exact.

    python -m spinal_jax.drill --kills 10 --workdir /tmp/drill

First an uninterrupted reference run; then rounds of the same run in fresh workdirs: each round starts
``python train.py``, waits until the run has written a checkpoint beyond the one it resumed from, sleeps a
random 0 to ``--max-delay`` seconds (so kills land during saves, right after them and between them) and
sends SIGKILL, then checks that every complete checkpoint on disk stores exactly the step its folder is
named after, and reruns. A round ends when the run finishes by itself; its final train state (every
array of the latest checkpoint) and its per-epoch accuracies must equal the reference's byte for byte.
Rounds repeat until ``--kills`` kills are done. Prints ``N/N kills resumed bit-exact``; exit status 1
when any round differs.

The default run is the MNIST CNN with the spinal head on real MNIST, 240 steps of batch 256 (one
epoch end with evaluation), a checkpoint every 20 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spinal_jax.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/mnist_cnn.py:spinal"
DEFAULT_OVERRIDES = (
    "data.batch_size=256",
    "max_train_steps=240",
    "checkpoint_every_steps=20",
    "log_every_steps=10",
    "tensorboard=False",
)
START_TIMEOUT_S = 600.0


@dataclasses.dataclass
class DrillResult:
    """Kills done, kills whose round ended bit-exact, and one line per round."""

    kills: int = 0
    exact_kills: int = 0
    rounds: list[str] = dataclasses.field(default_factory=list)


def train_command(workdir: Path, config: str, overrides: tuple[str, ...]) -> list[str]:
    flags = [f"--config.{item}" for item in overrides]
    return [sys.executable, str(REPO / "train.py"), f"--config={config}", f"--workdir={workdir}", *flags]


def complete_steps(folder: Path) -> list[int]:
    """Steps of ``folder`` (``checkpoints`` or ``best``) whose checkpoint Orbax has finished (renamed
    into place; its temporary folders have other names)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def mislabelled_checkpoints(workdir: Path) -> list[str]:
    """Complete checkpoints whose stored loop or data step differs from their folder's name."""
    wrong = []
    for kind in ("checkpoints", "best"):
        for step in complete_steps(workdir / kind):
            step_dir = workdir / kind / str(step)
            loop = json.loads((step_dir / "loop" / "metadata").read_text())
            data = json.loads((step_dir / "data" / "metadata").read_text())["per_process"][0]
            if loop["step"] != step or data["step"] != step:
                wrong.append(f"{kind}/{step}: loop step {loop['step']}, data step {data['step']}")
    return wrong


def final_state(workdir: Path) -> dict[str, bytes]:
    """Every array of the latest checkpoint's train state, as bytes by path."""
    from spinal_jax.checkpoints import final_state as arrays

    return {path: array.tobytes() for path, array in arrays(workdir).items()}


def accuracies(workdir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``summary.json`` without their timing fields."""
    history = json.loads((workdir / "summary.json").read_text())["history"]
    timing = ("epoch_seconds", "train_seconds_total", "compile_seconds")
    return [{k: v for k, v in record.items() if k not in timing} for record in history]


def run_until_checkpoint(cmd: list[str], workdir: Path, delay: float) -> tuple[bool, str]:
    """Run ``cmd`` until it writes a checkpoint beyond those on disk, wait ``delay`` s, SIGKILL it.

    Returns (killed, output tail): killed is False when the run finished (or failed) first.
    """
    before = max(complete_steps(workdir / "checkpoints"), default=-1)
    log_path = workdir.parent / f"{workdir.name}.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and max(complete_steps(workdir / "checkpoints"), default=-1) <= before:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"no new checkpoint within {START_TIMEOUT_S:.0f} s; see {log_path}")
            time.sleep(0.02)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"the run failed (exit {proc.returncode}); see {log_path}")
    return killed, log_path.read_text()[-2000:]


def drill_round(cmd: list[str], workdir: Path, rng: random.Random, max_delay: float, kills_left: int) -> int:
    """One run of ``cmd`` in ``workdir``, killed up to ``kills_left`` times; returns the kills done."""
    kills = 0
    while kills < kills_left:
        killed, _ = run_until_checkpoint(cmd, workdir, rng.uniform(0.0, max_delay))
        if not killed:
            return kills
        kills += 1
        wrong = mislabelled_checkpoints(workdir)
        if wrong:
            raise AssertionError(f"checkpoints store another step than their folder: {wrong}")
    finished = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True)  # the last rerun: to the end
    if finished.returncode != 0:
        raise RuntimeError(f"the resumed run failed: {finished.stderr.decode()[-1500:]}")
    return kills


def run_drill(
    kills: int, root: Path, config: str = DEFAULT_CONFIG, overrides: tuple[str, ...] = DEFAULT_OVERRIDES,
    seed: int = 0, max_delay: float = 1.5,
) -> DrillResult:  # fmt: skip
    """The drill (see the module docstring) under ``root``; returns what it found."""
    rng = random.Random(seed)
    reference = root / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    ran = subprocess.run(
        train_command(reference, config, overrides), cwd=REPO, env=_env(), capture_output=True
    )
    if ran.returncode != 0:
        raise UserError(f"The reference run failed: {ran.stderr.decode()[-1500:]}")
    expected_state, expected_acc = final_state(reference), accuracies(reference)
    result = DrillResult()
    while result.kills < kills:
        workdir = root / f"round{len(result.rounds)}"
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = train_command(workdir, config, overrides)
        done = drill_round(cmd, workdir, rng, max(max_delay, 0.0), kills - result.kills)
        if done == 0:
            raise UserError("The run finished before any kill: give a longer run (max_train_steps).")
        state = final_state(workdir)
        differ = sorted(k for k in expected_state if state.get(k) != expected_state[k])
        exact = not differ and accuracies(workdir) == expected_acc
        result.kills += done
        result.exact_kills += done if exact else 0
        what = "bit-exact" if exact else f"DIFFERENT ({len(differ)} arrays: {differ[:3]})"
        result.rounds.append(f"round {len(result.rounds)}: {done} kills, final state {what}")
        print(result.rounds[-1], flush=True)
    return result


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the user's XLA settings are the run's; tests set their own
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spinal_jax.drill", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in all (default 10)")
    parser.add_argument("--workdir", default="runs/drill", help="where the runs go (default runs/drill)")
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config file[:ARG] (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                        help="config overrides (default: a short run, see the module docstring)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--max-delay", type=float, default=1.5, help="longest wait after a checkpoint (s)")
    args = parser.parse_args(argv)
    if args.kills < 1:
        raise UserError(f"--kills={args.kills}: give at least 1.")
    overrides = tuple(args.set) if args.set else DEFAULT_OVERRIDES
    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    result = run_drill(args.kills, root, args.config, overrides, args.seed, args.max_delay)
    print(f"{result.exact_kills}/{result.kills} kills resumed bit-exact")
    return 0 if result.exact_kills == result.kills else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
