"""Does the spinal head help? Train both heads of a model over several seeds and compare them.

    python -m spinal_jax.reproduce --suite cpu --seeds 0,1,2 --workdir runs/reproduce
    python -m spinal_jax.reproduce --suite gpu --list

A suite is a list of :class:`Comparison` entries: one config (file + ``:ARG`` + field overrides), trained
with the default and with the spinal head, once per seed (``config.seed`` and ``config.data.seed``), each
run in its own workdir ``WORKDIR/<suite>/<name>_<head>_seed<k>``. Rerunning resumes unfinished runs from
their checkpoints and skips finished ones (a ``summary.json`` with ``"status": "finished"``). Each run prints
one progress line with its ETA and the suite's, estimated from the wall times of finished runs.

At the end ``results.md`` and ``results.json`` in ``WORKDIR/<suite>`` hold, per model and head: the
parameter count, the protocol, the number of seeds, the test accuracy at the best validation epoch and the
maximum test accuracy over epochs (the paper's protocol), each as mean ± sample std (ddof=1) over seeds,
the spinal - default difference paired by seed with its 95 % t-interval and a verdict, the wall time per
run, the machine, the versions and the git commit.

``--report`` writes the results of the runs finished so far without training (e.g. while another
process trains the suite). ``--suite`` takes a registered name (``cpu``, ``gpu``; :func:`register_suite`
adds more) or the path of a Python file defining ``SUITE``, a list of :class:`Comparison`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from spinal_jax import stats
from spinal_jax.errors import UserError, run_cli
from spinal_jax.models.heads import HEADS

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One model trained with both heads.

    Attributes:
      name: the run-name prefix (``<name>_<head>_seed<k>``), unique within a suite.
      config: ``path/to/config.py[:ARG]`` (relative paths: to the working directory, else the repository);
        the head is appended to ARG (``configs/mnist_cnn.py:spinal``).
      dataset: the data set as the table shows it.
      num_classes: the classes, for the parameter count.
      overrides: ``{'dotted.field': value}`` set on the config after loading, e.g. ``{'num_epochs': 3}``.
      note: why the protocol deviates from the config's, shown in the table.
      max_seeds: train only the first this many of the requested seeds (0: all).
      needs_accelerator: without a GPU/TPU the runs are skipped and the rows say "needs a GPU".
      pipeline: ``pipeline(config)`` -> an input pipeline for ``train_and_evaluate`` (None: from the config).
    """

    name: str
    config: str
    dataset: str
    num_classes: int
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    max_seeds: int = 0
    needs_accelerator: bool = False
    pipeline: Callable[[ml_collections.ConfigDict], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One (comparison, head, seed) training run: its results go to ``workdir``; it is trained by
    ``train.py --workdir trained_in``, which is ``workdir`` itself, or, for seeds trained in parallel
    (``config.num_seeds``), the shared workdir of which ``workdir`` is the ``seed<k>`` replica."""

    comparison: Comparison
    head: str
    seed: int
    workdir: Path
    trained_in: Path

    @property
    def name(self) -> str:
        return f"{self.comparison.name}_{self.head}_seed{self.seed}"


def _shared_data(folder: str) -> str:
    from spinal_jax.data.config import shared_dir

    return str(shared_dir() / "data" / folder)


def cpu_suite() -> list[Comparison]:
    """About 1.5 h on a 2-core CPU machine shared with other work (measured in docs/RESULTS.md)."""
    return [
        Comparison("mnist_cnn", "configs/mnist_cnn.py", "MNIST", 10, note="paper recipe"),
        Comparison(
            "quickdraw_cnn",
            "configs/mnist_cnn.py",
            "Quick Draw (6 classes)",
            6,
            overrides={"data.name": "quickdraw"},
            note="MNIST CNN recipe on Quick Draw",
        ),
        Comparison(
            "quickdraw_vgg5",
            "configs/quickdraw_vgg5.py",
            "Quick Draw (6 classes)",
            6,
            overrides={"num_epochs": 3},
            note=(
                "shortened: 3 of 30 epochs; one VGG-5 step of 100 images took 3-6 s on the shared "
                "2-core machine, 6-14 min per epoch"
            ),
            max_seeds=1,
        ),
    ]


def _resident() -> dict[str, Any]:
    return {"data.augment_on": "device", "data.device_resident": True}


def gpu_suite() -> list[Comparison]:
    """About ten minutes on one GPU (H100/H200): device-resident data, compiled epochs."""
    return [
        Comparison(
            "mnist_vgg5",
            "configs/mnist_vgg5_fast.py:bf16",
            "MNIST",
            10,
            overrides={"num_epochs": 20},
            note=(
                "paper recipe with a 10 % validation hold-out, shortened: 20 of 200 epochs "
                "(200 epochs x 6 runs would take ~25 min on an H200)"
            ),
            needs_accelerator=True,
        ),
        Comparison(
            "quickdraw_vgg5",
            "configs/quickdraw_vgg5.py",
            "Quick Draw (6 classes)",
            6,
            overrides=_resident(),
            note="full 30 epochs, device-resident",
            needs_accelerator=True,
        ),
        Comparison(
            "cifar10_cnn",
            "configs/cifar10_cnn.py:image_folder",
            "CIFAR-10 (shared JPEG copy)",
            10,
            overrides={"num_epochs": 15, "data.manual_dir": _shared_data("cifar10_jpeg"), **_resident()},
            note="shortened: 15 of 160 epochs, to fit the ten minutes",
            needs_accelerator=True,
        ),
    ]


SUITES: dict[str, Callable[[], list[Comparison]]] = {"cpu": cpu_suite, "gpu": gpu_suite}


def register_suite(name: str, comparisons: Callable[[], list[Comparison]]) -> None:
    """Make ``--suite name`` run ``comparisons()``."""
    SUITES[name] = comparisons


def load_suite(spec: str) -> tuple[str, list[Comparison]]:
    """A registered suite name or a ``.py`` file defining ``SUITE`` -> (name, comparisons)."""
    if spec in SUITES:
        return spec, SUITES[spec]()
    path = Path(spec)
    if path.suffix == ".py" and path.is_file():
        module_spec = importlib.util.spec_from_file_location(f"_suite_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not isinstance(getattr(module, "SUITE", None), list):
            raise UserError(f"Suite file {spec} defines no SUITE list of spinal_jax.reproduce.Comparison.")
        return path.stem, module.SUITE
    raise UserError(f"Unknown suite {spec!r}: use one of {sorted(SUITES)} or a .py file defining SUITE.")


def parse_seeds(text: str) -> list[int]:
    """``'0,1,2'`` -> [0, 1, 2]; distinct non-negative integers, at least one."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: use comma-separated integers, e.g. 0,1,2.") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give at least one seed, each >= 0 and each once.")
    return seeds


def plan_runs(
    suite: str, comparisons: Sequence[Comparison], seeds: Sequence[int], root: Path, num_seeds: int = 1
) -> list[Run]:
    """Every run of the suite, in training order: per comparison, per group of up to ``num_seeds``
    consecutive seeds trained together (:func:`seed_groups`), both heads, each seed of the group."""
    names = [c.name for c in comparisons]
    if len(set(names)) != len(names):
        raise UserError(f"Suite {suite!r} repeats a comparison name: {names}.")
    runs = []
    for c in comparisons:
        for group in seed_groups(seeds[: c.max_seeds or None], num_seeds):
            for head in HEADS:
                for seed in group:
                    workdir = root / suite / f"{c.name}_{head}_seed{seed}"
                    trained_in = workdir
                    if len(group) > 1:
                        trained_in = root / suite / f"{c.name}_{head}_seeds{group[0]}-{group[-1]}"
                        workdir = trained_in / f"seed{seed}"
                    runs.append(Run(c, head, seed, workdir, trained_in))
    return runs


def seed_groups(seeds: Sequence[int], num_seeds: int) -> list[list[int]]:
    """``seeds`` cut into runs of consecutive seeds (``k, k + 1, ...``; a replica of a parallel run
    has seed ``seed + r``), each at most ``num_seeds`` long, in order."""
    groups: list[list[int]] = []
    for seed in seeds:
        if groups and seed == groups[-1][-1] + 1 and len(groups[-1]) < num_seeds:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    return groups


def _config_path(path: str) -> Path:
    given = Path(path)
    return given if given.is_file() or given.is_absolute() else REPO / path


def _set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise UserError(f"Override {key}={value!r}: the config has no field {key!r}.")
    node[leaf] = value


def build_config(run: Run) -> ml_collections.ConfigDict:
    """The run's config: the file's ``get_config(ARG,HEAD)``, the overrides, the seed."""
    path, _, arg = run.comparison.config.partition(":")
    file = _config_path(path)
    module_spec = importlib.util.spec_from_file_location(f"_reproduce_config_{file.stem}", file)
    if module_spec is None or not file.is_file():
        raise UserError(f"No config file {path!r} (comparison {run.comparison.name!r}).")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(",".join(filter(None, (arg, run.head))))
    config.model.head = run.head
    for key, value in run.comparison.overrides.items():
        _set_field(config, key, value)
    config.seed = run.seed
    config.data.seed = run.seed
    config.tensorboard = False
    return config


def finished_summary(run: Run, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The run's ``summary.json`` when it finished the configured protocol, else None."""
    path = run.workdir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("status") != "finished":
        return None
    capped = config.max_train_steps and summary.get("step", 0) >= config.max_train_steps
    return summary if capped or summary.get("epochs", 0) >= config.num_epochs else None


def has_accelerator() -> bool:
    """Whether jax sees a GPU or TPU."""
    import jax

    return any(d.platform != "cpu" for d in jax.devices())


def _load_walls(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_walls(path: Path, walls: dict[str, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(walls, indent=1, sort_keys=True))
    tmp.replace(path)


def estimate_seconds(run: Run, walls: dict[str, float], runs: Sequence[Run]) -> float | None:
    """A run's expected wall time: the mean over finished runs of the same model and head, else of the
    same model, else None."""
    for same in (
        lambda r: r.comparison.name == run.comparison.name and r.head == run.head,
        lambda r: r.comparison.name == run.comparison.name,
    ):
        known = [walls[r.name] for r in runs if same(r) and r.name in walls]
        if known:
            return sum(known) / len(known)
    return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(i: int, run: Run, todo: Sequence[Run], walls: dict[str, float], runs: Sequence[Run]) -> str:
    """``run i/N NAME: ETA ... for this run, suite ETA ...`` (from finished runs' wall times)."""
    estimates = [estimate_seconds(r, walls, runs) for r in todo]
    known = sum(e for e in estimates if e is not None)
    missing = sum(e is None for e in estimates)
    suite_eta = _duration(known)
    if missing == len(todo):
        suite_eta = "unknown until a run finishes"
    elif missing:
        suite_eta = f">= {suite_eta} ({missing} runs not estimated yet)"
    return (
        f"[reproduce] run {i}/{len(runs)} {run.name}: ETA {_duration(estimates[0])} for this run, "
        f"suite ETA {suite_eta} ({len(todo)} runs left)"
    )


def train_runs(group: Sequence[Run], config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Train (or resume) the runs of one workdir in this process, ``config`` being the first's: one run,
    or consecutive seeds in parallel (``config.num_seeds``); returns ``train_and_evaluate``'s summary."""
    from spinal_jax import training

    config = ml_collections.ConfigDict(config.to_dict())
    config.num_seeds = len(group)
    first = group[0]
    pipeline = first.comparison.pipeline(config) if first.comparison.pipeline else None
    return training.train_and_evaluate(config, first.trained_in, pipeline=pipeline)


def run_suite(
    suite: str,
    comparisons: Sequence[Comparison],
    seeds: Sequence[int],
    root: Path,
    train: bool = True,
    num_seeds: int = 1,
) -> dict[str, Any] | None:
    """Train every unfinished run (none when ``train`` is False), up to ``num_seeds`` seeds of a model
    and head at once, then write ``results.md`` / ``results.json`` from the finished ones; returns the
    results (None when a signal interrupted a run: rerun to resume)."""
    runs = plan_runs(suite, comparisons, seeds, root, num_seeds)
    (root / suite).mkdir(parents=True, exist_ok=True)
    walls_path = root / suite / "wall_seconds.json"
    walls = _load_walls(walls_path)
    accelerator = has_accelerator()
    configs = {r.name: build_config(r) for r in runs}
    groups: dict[Path, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.trained_in, []).append(run)
    for group in groups.values() if train else []:
        i, label = runs.index(group[0]) + 1, " + ".join(r.name for r in group)
        if all(finished_summary(r, configs[r.name]) is not None for r in group):
            print(f"[reproduce] run {i}/{len(runs)} {label}: finished earlier, skipped", flush=True)
            continue
        if group[0].comparison.needs_accelerator and not accelerator:
            print(f"[reproduce] run {i}/{len(runs)} {label}: needs a GPU, skipped", flush=True)
            continue
        todo = [r for r in runs[i - 1 :] if accelerator or not r.comparison.needs_accelerator]
        print(progress_line(i, group[0], todo, walls, runs), flush=True)
        start = time.perf_counter()
        summary = train_runs(group, configs[group[0].name])
        if summary.get("status") != "finished":
            print(f"[reproduce] {label}: {summary.get('status')}; rerun the same command to resume.")
            return None
        for run in group:  # runs trained together share the wall time
            walls[run.name] = (time.perf_counter() - start) / len(group)
        _save_walls(walls_path, walls)
    results = collect_results(suite, runs, configs, walls, accelerator)
    write_results(root / suite, results)
    return results


def describe_protocol(config: ml_collections.ConfigDict, note: str = "") -> str:
    """Epochs, optimiser, batch, learning-rate rule and augmentation of a config, in one line."""
    o = config.optim
    optimiser = f"{o.name} lr {o.learning_rate:g}" + (f" momentum {o.momentum:g}" if o.name == "sgd" else "")
    rule = f", plateau restarts (U^{config.plateau.power:g})" if config.plateau.enabled else ""
    if config.schedule.name != "constant":
        rule += f", {config.schedule.name} schedule"
    augment = "none" if config.data.augment == "none" else (config.data.augment_policy or "reference")
    steps = f", at most {config.max_train_steps} steps" if config.max_train_steps else ""
    text = (
        f"{config.num_epochs} epochs{steps}, {optimiser}, batch {config.data.batch_size}{rule}, "
        f"augmentation {augment}"
    )
    return f"{text} ({note})" if note else text


def parameter_count(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, int]:
    """Total and head parameter counts of the config's model (shapes only, nothing allocated)."""
    from spinal_jax.models.summary import param_counts

    kwargs = dict(config.model.kwargs.to_dict()) if config.model.kwargs else {}
    return param_counts(config.model.name, num_classes, config.model.head, **kwargs)


def _summaries(runs: Sequence[Run], configs: dict[str, ml_collections.ConfigDict]) -> dict[str, dict]:
    out = {}
    for r in runs:
        summary = finished_summary(r, configs[r.name])
        if summary is not None:
            out[r.name] = summary
    return out


def _head_row(c: Comparison, head: str, runs: Sequence[Run], done: dict, walls: dict, configs: dict) -> dict:
    """One table row: a model with one head, aggregated over its finished seeds."""
    mine = [r for r in runs if r.comparison is c and r.head == head]
    config = configs[mine[0].name]
    finished = [r for r in mine if r.name in done]
    tbv = [done[r.name].get("test_at_best_validation") for r in finished]
    top = [done[r.name].get("max_test_over_epochs") for r in finished]
    wall = [walls[r.name] for r in finished if r.name in walls]
    return {
        "dataset": c.dataset,
        "comparison": c.name,
        "model": config.model.name,
        "head": head,
        "parameters": parameter_count(config, c.num_classes),
        "protocol": describe_protocol(config, c.note),
        "seeds_planned": [r.seed for r in mine],
        "seeds": [r.seed for r in finished],
        "n_seeds": len(finished),
        "test_at_best_validation": {"values": tbv, **_mean_std(tbv)},
        "max_test_over_epochs": {"values": top, **_mean_std(top)},
        "wall_seconds": {"values": wall, "mean": stats.mean(wall)},
        "needs_accelerator": c.needs_accelerator,
    }


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    return {"mean": stats.mean(present), "std": stats.sample_std(present)}


def _paired(default: dict, spinal: dict, key: str) -> dict[str, Any]:
    """spinal - default over the seeds both heads finished, with its interval and verdict."""
    a = dict(zip(default["seeds"], default[key]["values"], strict=True))
    b = dict(zip(spinal["seeds"], spinal[key]["values"], strict=True))
    seeds = [s for s in default["seeds"] if s in b and a[s] is not None and b[s] is not None]
    interval = stats.paired_interval([a[s] for s in seeds], [b[s] for s in seeds])
    return {"seeds": seeds, **interval, "verdict": stats.verdict(interval)}


def collect_results(
    suite: str, runs: Sequence[Run], configs: dict, walls: dict[str, float], accelerator: bool
) -> dict[str, Any]:
    """Every comparison's rows and paired differences, with the machine and versions."""
    done = _summaries(runs, configs)
    comparisons = list({r.comparison.name: r.comparison for r in runs}.values())
    entries = []
    for c in comparisons:
        rows = {h: _head_row(c, h, runs, done, walls, configs) for h in HEADS}
        skipped = c.needs_accelerator and not accelerator
        entries.append(
            {
                "rows": rows,
                "needs_a_gpu": skipped and not any(rows[h]["n_seeds"] for h in HEADS),
                "difference": {
                    key: _paired(rows["default"], rows["spinal"], key)
                    for key in ("test_at_best_validation", "max_test_over_epochs")
                },
            }
        )
    return {"suite": suite, "environment": environment(), "comparisons": entries}


def environment() -> dict[str, Any]:
    """Machine, device, versions, git commit and date."""
    import flax
    import jax
    import jaxlib
    import optax

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def _percent(mean: float | None, spec: str, detail: str = "") -> str:
    """``100 * mean`` in format ``spec`` followed by ``detail``; '-' when there is no mean."""
    return "-" if mean is None else f"{100 * mean:{spec}}{detail}"


def _pct(stat: dict[str, Any]) -> str:
    """``mean ± std`` in percent."""
    std = stat["std"]
    return _percent(stat["mean"], ".2f", "" if std is None else f" ± {100 * std:.2f}")


def _diff(d: dict[str, Any]) -> str:
    """``mean [low, high]`` in percentage points."""
    bounds = "" if d["low"] is None else f" [{100 * d['low']:+.3f}, {100 * d['high']:+.3f}]"
    return _percent(d["mean"], "+.3f", bounds)


def _paired_cell(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return d["verdict"]
    return f"{_diff(d)}: {d['verdict']}" if d["low"] is not None else f"{_diff(d)} ({d['verdict']})"


def _table_row(entry: dict[str, Any], head: str) -> str:
    row = entry["rows"][head]
    p = row["parameters"]
    cells = [row["dataset"], f"`{row['model']}`", head, f"{p['total']:,} ({p['head']:,})", row["protocol"]]
    if entry["needs_a_gpu"]:
        return "| " + " | ".join([*cells, "needs a GPU", *["-"] * 5]) + " |"
    planned = len(row["seeds_planned"])
    n = f"{row['n_seeds']}" + (f" of {planned} finished" if row["n_seeds"] < planned else "")
    if head == "spinal":
        diffs = entry["difference"]
        tbv, top = diffs["test_at_best_validation"], diffs["max_test_over_epochs"]
        paired = [_paired_cell(tbv), _paired_cell(top)]
    else:
        paired = ["(reference)", "(reference)"]
    wall = row["wall_seconds"]["mean"]
    scores = [_pct(row["test_at_best_validation"]), _pct(row["max_test_over_epochs"])]
    return "| " + " | ".join([*cells, n, *scores, *paired, _duration(wall)]) + " |"


def format_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the table, then the machine and versions."""
    env = results["environment"]
    header = (
        "| data set | model | head | parameters (head) | protocol | n seeds | test at best validation (%) "
        "| max test over epochs (%) | spinal - default, test at best validation (pp, 95 % CI) "
        "| spinal - default, max test (pp, 95 % CI) | wall time per run |"
    )
    lines = [f"# Suite `{results['suite']}`: default vs spinal head", "", header, "|" + "---|" * 11]
    for entry in results["comparisons"]:
        lines += [_table_row(entry, head) for head in HEADS]
    lines += [
        "",
        "Accuracies: mean ± sample standard deviation (ddof=1) over seeds. Differences: spinal - default, "
        "paired by seed, in percentage points, with the 95 % Student-t interval; 'better' / 'worse' when "
        "it excludes 0. Wall time: the call that finished the run (data preparation and compilation "
        "included).",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, devices {env['devices']}. Versions: Python "
        f"{env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
        f"optax {env['optax']}. "
        f"Commit {env['git_commit']}. Written {env['date']}.",
    ]
    return "\n".join(lines) + "\n"


def write_results(folder: Path, results: dict[str, Any]) -> None:
    """``results.json`` and ``results.md`` in ``folder``."""
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    (folder / "results.md").write_text(format_markdown(results))


def list_runs(
    suite: str, comparisons: Sequence[Comparison], seeds: Sequence[int], root: Path, num_seeds: int = 1
) -> list[str]:
    """One line per planned run: its name, config, protocol and state (nothing is trained)."""
    lines = []
    runs = plan_runs(suite, comparisons, seeds, root, num_seeds)
    for i, run in enumerate(runs, 1):
        config = build_config(run)
        state = "finished" if finished_summary(run, config) else "to train"
        if run.comparison.needs_accelerator:
            state += " (needs a GPU)"
        lines.append(
            f"{i:>3}/{len(runs)} {run.name:<32} {run.comparison.config} | "
            f"{describe_protocol(config, run.comparison.note)} | {state}"
        )
    return lines


def _setup_logging() -> None:
    from spinal_jax.errors import cli_logging

    cli_logging()


def _compilation_cache(folder: Path) -> None:
    """Keep compiled programs in ``folder`` unless a cache is set: seeds and resumes reuse them."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(folder))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", required=True, help=f"{sorted(SUITES)} or a .py file defining SUITE")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--num-seeds",
        type=int,
        default=1,
        help="train up to this many consecutive seeds of a model and head at once, in one program "
        "(config.num_seeds; default 1: one run per seed)",
    )
    parser.add_argument("--workdir", default="runs/reproduce", help="runs go to WORKDIR/<suite>/")
    parser.add_argument("--list", action="store_true", help="print the runs and exit without training")
    parser.add_argument(
        "--report", action="store_true", help="write results.md/json from the finished runs, train nothing"
    )
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if args.num_seeds < 1:
        raise UserError(f"--num-seeds={args.num_seeds}: give 1 or more.")
    name, comparisons = load_suite(args.suite)
    root = Path(args.workdir).resolve()
    if args.list:
        print("\n".join(list_runs(name, comparisons, seeds, root, args.num_seeds)))
        return None
    _setup_logging()
    _compilation_cache(root / name / "xla_cache")
    results = run_suite(name, comparisons, seeds, root, train=not args.report, num_seeds=args.num_seeds)
    if results is not None:
        print((root / name / "results.md").read_text(), flush=True)
    return results


if __name__ == "__main__":
    run_cli(main)
