"""``python -m spinal_jax.reproduce``: resume after a kill, skip finished runs, and a table whose numbers
match those computed here from the runs' own ``summary.json`` files.

The suite trained here is one pair (the MNIST CNN, default and spinal head) on real MNIST arrays (the
first 320 train images, 100 validation, 200 test) for one epoch of 10 steps, with seeds 0 and 1: four
runs of a few seconds each, in ``python -m spinal_jax.reproduce`` subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spinal_jax import reproduce, stats
from spinal_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SUITE_FILE = """
from spinal_jax.reproduce import Comparison
from tests.training_helpers.array_pipeline import ArrayPipeline

SUITE = [
    Comparison(
        "mnist_cnn", "configs/mnist_cnn.py", "MNIST (320 train images)", 10,
        overrides={"num_epochs": 1, "data.batch_size": 32, "optim.learning_rate": 0.05},
        pipeline=lambda c: ArrayPipeline(320, 100, 200, c.data.batch_size, seed=c.data.seed),
    )
]
"""
RUNS = [f"mnist_cnn_{head}_seed{seed}" for seed in (0, 1) for head in ("default", "spinal")]
T_975_DF1 = 12.706


def _start(suite_file: Path, root: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spinal_jax.reproduce", "--suite", str(suite_file), "--seeds", "0,1"]
    with log.open("w") as out:
        return subprocess.Popen(
            [*cmd, "--workdir", str(root)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each finished run's summary.json: its bytes and modification time."""
    out = {}
    for name in RUNS:
        path = folder / name / "summary.json"
        if path.is_file():
            out[name] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Start the suite, SIGKILL it once the first run has finished, rerun it to the end, rerun again."""
    tmp = tmp_path_factory.mktemp("reproduce")
    suite_file = tmp / "tiny.py"
    suite_file.write_text(SUITE_FILE)
    root, folder = tmp / "runs", tmp / "runs" / "tiny"
    proc = _start(suite_file, root, tmp / "first.log")
    deadline = time.monotonic() + 600
    while not (folder / RUNS[0] / "summary.json").is_file():
        assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the first run did not finish in 600 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _snapshot(folder)
    report = [sys.executable, "-m", "spinal_jax.reproduce", "--suite", str(suite_file), "--seeds", "0,1"]
    subprocess.run([*report, "--workdir", str(root), "--report"], cwd=REPO, timeout=300, check=True)
    partial = (folder / "results.md").read_text()
    second = _start(suite_file, root, tmp / "second.log")
    assert second.wait(timeout=900) == 0, (tmp / "second.log").read_text()[-3000:]
    done = _snapshot(folder)
    third = _start(suite_file, root, tmp / "third.log")
    assert third.wait(timeout=600) == 0, (tmp / "third.log").read_text()[-3000:]
    return {
        "folder": folder,
        "killed": killed,
        "partial_table": partial,
        "done": done,
        "after_rerun": _snapshot(folder),
        "logs": {k: (tmp / f"{k}.log").read_text() for k in ("first", "second", "third")},
    }


def test_killed_suite_resumes_without_retraining_finished_runs(suite_runs: dict) -> None:
    killed, done = suite_runs["killed"], suite_runs["done"]
    assert RUNS[0] in killed
    assert sorted(done) == sorted(RUNS)
    for name, snapshot in killed.items():
        assert done[name] == snapshot, f"{name} was trained again after the kill"
    second = suite_runs["logs"]["second"]
    assert f"{RUNS[0]}: finished earlier, skipped" in second
    for i, name in enumerate(RUNS, 1):
        trained = f"run {i}/{len(RUNS)} {name}: ETA" in second
        assert trained == (name not in killed), name
    assert (suite_runs["folder"] / "results.md").is_file()


def test_report_while_unfinished_says_how_many_seeds_finished(suite_runs: dict) -> None:
    rows = [line for line in suite_runs["partial_table"].splitlines() if line.startswith("| MNIST")]
    for head, row in zip(("default", "spinal"), rows, strict=True):
        finished = sum(name.startswith(f"mnist_cnn_{head}_") for name in suite_runs["killed"])
        assert f"| {head} |" in row
        assert (f"| {finished} of 2 finished |" in row) == (finished < 2), row
    assert rows[1].endswith("| unknown |") == (RUNS[1] not in suite_runs["killed"])


def test_rerun_of_a_finished_suite_trains_nothing(suite_runs: dict) -> None:
    assert suite_runs["after_rerun"] == suite_runs["done"]
    third = suite_runs["logs"]["third"]
    assert third.count("finished earlier, skipped") == len(RUNS)
    assert "ETA" not in third


def _independent(folder: Path, key: str) -> dict[str, float]:
    """Means, sample stds and the paired 95 % interval of ``key``, from the summaries, with numpy."""
    acc = {
        head: np.array(
            [
                json.loads((folder / f"mnist_cnn_{head}_seed{s}" / "summary.json").read_text())[key]
                for s in (0, 1)
            ]
        )  # fmt: skip
        for head in ("default", "spinal")
    }
    diff = acc["spinal"] - acc["default"]
    half = T_975_DF1 * diff.std(ddof=1) / np.sqrt(2)
    return {
        "default_mean": acc["default"].mean(),
        "default_std": acc["default"].std(ddof=1),
        "spinal_mean": acc["spinal"].mean(),
        "spinal_std": acc["spinal"].std(ddof=1),
        "diff": diff.mean(),
        "low": diff.mean() - half,
        "high": diff.mean() + half,
    }


@pytest.mark.parametrize("key", ["test_at_best_validation", "max_test_over_epochs"])
def test_table_matches_numbers_computed_from_the_summaries(suite_runs: dict, key: str) -> None:
    folder = suite_runs["folder"]
    want = _independent(folder, key)
    (entry,) = json.loads((folder / "results.json").read_text())["comparisons"]
    rows, paired = entry["rows"], entry["difference"][key]
    for head in ("default", "spinal"):
        assert rows[head]["n_seeds"] == 2
        assert rows[head][key]["mean"] == pytest.approx(want[f"{head}_mean"], abs=1e-12)
        assert rows[head][key]["std"] == pytest.approx(want[f"{head}_std"], abs=1e-12)
    assert paired["seeds"] == [0, 1]
    assert paired["mean"] == pytest.approx(want["diff"], abs=1e-12)
    # 12.706 is the tabulated t quantile; SciPy's is 12.7062..., so the bounds agree to 1e-4 relative.
    assert paired["low"] == pytest.approx(want["low"], rel=1e-4, abs=1e-9)
    assert paired["high"] == pytest.approx(want["high"], rel=1e-4, abs=1e-9)
    verdict = "better" if want["low"] > 0 else "worse" if want["high"] < 0 else "no difference within"
    assert paired["verdict"].startswith(verdict)
    table = (folder / "results.md").read_text()
    spinal_row = next(line for line in table.splitlines() if "| spinal |" in line)
    assert f"{100 * want['spinal_mean']:.2f} ± {100 * want['spinal_std']:.2f}" in spinal_row
    cells = re.findall(r"([+-]\d+\.\d{3}) \[([+-]\d+\.\d{3}), ([+-]\d+\.\d{3})\]", spinal_row)
    assert len(cells) == 2, spinal_row  # test at best validation, then max test
    shown = [float(x) for x in cells[0 if key == "test_at_best_validation" else 1]]
    assert shown == pytest.approx([100 * want[k] for k in ("diff", "low", "high")], abs=0.002)
    assert "jaxlib" in table and "Commit" in table


def _reproduce_threefry(suite_file: Path, root: Path, *flags: str) -> subprocess.CompletedProcess:
    """The tiny suite, seeds 0 and 1, with jax's default generator (threefry draws the same bits inside
    ``jax.vmap`` as outside; the suite's ``rbg`` does not, see tests/test_seeds.py)."""
    cmd = [sys.executable, "-m", "spinal_jax.reproduce", "--suite", str(suite_file), "--seeds", "0,1"]
    env = {**os.environ, "JAX_DEFAULT_PRNG_IMPL": "threefry2x32"}
    proc = subprocess.run(
        [*cmd, *flags, "--workdir", str(root)], cwd=REPO, env=env, timeout=900, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_parallel_seeds_train_each_head_once_and_agree_with_the_runs_of_each_seed(tmp_path: Path) -> None:
    """``--num-seeds 2``: seeds 0 and 1 of each head in one program (``mnist_cnn_<head>_seeds0-1/``, one
    ``seed<k>/`` replica each); every run's results agree with the run of its seed alone up to float32
    noise (at most one of the 200 test images), and the table aggregates the same two seeds."""
    suite_file = tmp_path / "tiny.py"
    suite_file.write_text(SUITE_FILE)
    _reproduce_threefry(suite_file, tmp_path / "alone")
    proc = _reproduce_threefry(suite_file, tmp_path / "together", "--num-seeds", "2")
    assert proc.stdout.count(" for this run,") == 2  # one training per head
    alone, together = tmp_path / "alone" / "tiny", tmp_path / "together" / "tiny"
    for head in ("default", "spinal"):
        for seed in (0, 1):
            path = together / f"mnist_cnn_{head}_seeds0-1" / f"seed{seed}" / "summary.json"
            mine = json.loads(path.read_text())
            solo = json.loads((alone / f"mnist_cnn_{head}_seed{seed}" / "summary.json").read_text())
            for key in ("test_at_best_validation", "max_test_over_epochs"):
                assert abs(mine[key] - solo[key]) <= 1 / 200, (head, seed, key, mine[key], solo[key])
    (entry,) = json.loads((together / "results.json").read_text())["comparisons"]
    assert all(entry["rows"][head]["seeds"] == [0, 1] for head in ("default", "spinal"))


def test_seed_groups_are_consecutive_seeds_of_at_most_num_seeds() -> None:
    assert reproduce.seed_groups([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert reproduce.seed_groups([0, 1, 2], 8) == [[0, 1, 2]]
    assert reproduce.seed_groups([0, 2, 3, 7], 4) == [[0], [2, 3], [7]]
    assert reproduce.seed_groups([5, 4], 2) == [[5], [4]]


def test_list_prints_every_run_and_trains_nothing(tmp_path: Path) -> None:
    suite_file = tmp_path / "tiny.py"
    suite_file.write_text(SUITE_FILE)
    cmd = [sys.executable, "-m", "spinal_jax.reproduce", "--suite", str(suite_file), "--list"]
    out = subprocess.run(
        [*cmd, "--seeds", "0,1", "--workdir", str(tmp_path / "runs")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert [line.split()[1] for line in out.splitlines()] == RUNS
    assert "1 epochs" in out and "to train" in out
    assert not (tmp_path / "runs").exists()


def test_bad_suite_and_seeds_are_user_errors() -> None:
    with pytest.raises(UserError, match="Unknown suite 'nope'"):
        reproduce.load_suite("nope")
    for bad in ("", "0,x", "1,1", "-1"):
        with pytest.raises(UserError, match="--seeds"):
            reproduce.parse_seeds(bad)
    assert reproduce.parse_seeds("0, 2,5") == [0, 2, 5]
    out = subprocess.run(
        [sys.executable, "-m", "spinal_jax.reproduce", "--suite", "nope"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Unknown suite 'nope'") and "Traceback" not in out.stderr


def test_one_seed_has_no_interval() -> None:
    interval = stats.paired_interval([0.9], [0.95])
    assert interval["mean"] == pytest.approx(0.05) and interval["low"] is None
    assert stats.verdict(interval) == "1 seed: no interval"
    assert stats.verdict(stats.paired_interval([0.90, 0.91, 0.92], [0.95, 0.97, 0.96])) == "better"
    assert stats.t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert stats.T975[2] == pytest.approx(stats.t_quantile_975(3), abs=1e-3)


@pytest.mark.skipif(reproduce.has_accelerator(), reason="checks the rows of a machine without a GPU")
def test_gpu_suite_rows_say_needs_a_gpu_on_a_cpu(tmp_path: Path) -> None:
    comparisons = reproduce.gpu_suite()
    results = reproduce.run_suite("gpu", comparisons, [0, 1, 2], tmp_path)
    assert all(entry["needs_a_gpu"] for entry in results["comparisons"])
    rows = [line for line in (tmp_path / "gpu" / "results.md").read_text().splitlines() if "| `" in line]
    assert len(rows) == 2 * len(comparisons)
    assert all("needs a GPU" in row for row in rows)
    assert not [p for p in (tmp_path / "gpu").iterdir() if p.is_dir() and p.name != "xla_cache"]
