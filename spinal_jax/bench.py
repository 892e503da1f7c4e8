"""Training-step benchmarks and time to accuracy, on the configs and the train state training uses.

    python -m spinal_jax.bench --config configs/mnist_vgg5.py --heads spinal,default \\
        --dtypes float32,bfloat16 --modes step,scan --steps 100 --json bench.json
    python -m spinal_jax.bench --config configs/imagenet_resnet50.py:spinal --config.data.batch_size=256
    python -m spinal_jax.bench --config configs/mnist_vgg5_fast.py:bf16,paper --modes tta --target 0.995
    python -m spinal_jax.bench --input_pipeline mnist
    python -m spinal_jax.bench --config configs/mnist_vgg5.py:spinal --modes scan --config.num_seeds=8

A workload is what ``train.py --config`` trains: a config file[:ARG] with ``--config.FIELD=VALUE`` overrides,
read by the same ml_collections flag (:func:`spinal_jax.config.define_config_flag`). Its model and train
state (optimiser, schedule, fine-tuning mode) come from :mod:`spinal_jax.build`, as in training. ``--heads``
and ``--dtypes`` repeat the workload with ``config.model.head`` / ``config.dtype`` set to each value (default:
the config's own). The batch is ``config.data.batch_size``, on one device; the classes are
``config.model.num_classes`` (the model's registry default when 0) and the images are
``config.data.image_size`` squares (the model's input size when 0).

Modes (``--modes``, comma-separated):
  step  the pmapped train step of training (:func:`spinal_jax.steps.pmap_train_step`), called from Python
        once per batch (the CPU path);
  scan  an epoch of ``--steps`` batches compiled as one ``lax.scan`` of the same step over synthetic batches
        held on the device (the accelerator path: no per-step dispatch or host transfer);
  tta   time to accuracy: a whole training run (``training.train_and_evaluate``) of the config, in a
        temporary workdir unless ``--workdir`` is given.

With ``--config.num_seeds=S`` the ``step`` and ``scan`` modes train S seed replicas in one program
(each on its own batches); images/s then counts the images of all S.

For ``step`` and ``scan`` it records images/s (median of ``--windows`` windows of ``--steps`` steps), step
time, compile time, peak device memory, XLA's FLOP count of one step and the model FLOPs utilisation against
the device's peak. For ``tta``: compile seconds, the training seconds (after compilation; evaluation
included) until the ``--target_split`` accuracy first reached ``--target``, the run's total wall time (data
loading and compilation included) and the best accuracy. ``--input_pipeline DATASET`` adds a row of host
input-pipeline images/s (:mod:`spinal_jax.data.throughput`: per-example transform on one core, and the
grain train iterator).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import jax_utils
from ml_collections import config_flags

from spinal_jax import build, steps
from spinal_jax import config as config_lib
from spinal_jax import workdir as workdir_lib
from spinal_jax.errors import UserError, run_cli
from spinal_jax.models import get_spec

# Dense peak FLOP/s by device kind and compute dtype (vendor figures; fp32 matmuls use TF32 on Hopper).
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989.4e12,
    ("H100", "float32"): 494.7e12,
    ("H200", "bfloat16"): 989.4e12,
    ("H200", "float32"): 494.7e12,
    ("A100", "bfloat16"): 312e12,
    ("A100", "float32"): 156e12,
}
THROUGHPUT_MODES = ("step", "scan")
MODES = (*THROUGHPUT_MODES, "tta")
PROGRAM = "python -m spinal_jax.bench"


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The benchmark's flags on ``flag_values``: ``--config`` (with its overrides in ``argv``) as
    ``train.py`` defines it, and the benchmark's own."""
    config_lib.define_config_flag(flag_values, argv)
    on = {"flag_values": flag_values}
    flags.DEFINE_list(
        "heads", [], "Run the workload with each config.model.head (default: the config's).", **on
    )
    flags.DEFINE_list("dtypes", [], "Run the workload with each config.dtype (default: the config's).", **on)
    flags.DEFINE_list("modes", ["step"], f"Comma-separated, from {', '.join(MODES)}.", **on)
    flags.DEFINE_integer("steps", 20, "Steps per timing window (= one scanned epoch).", **on)
    flags.DEFINE_integer("windows", 5, "Timing windows; images/s is their median.", **on)
    flags.DEFINE_float("target", 0.995, "tta: the target accuracy.", **on)
    flags.DEFINE_enum("target_split", "test", ["test", "validation"], "tta: the split of --target.", **on)
    flags.DEFINE_string("workdir", None, "tta: keep the run here (default: a temporary folder).", **on)
    flags.DEFINE_string(
        "input_pipeline", None, "Add a host input-pipeline images/s row of this data set.", **on
    )
    flags.DEFINE_integer("input_images", 2000, "--input_pipeline: images to time.", **on)
    flags.DEFINE_string("data_dir", "", "--input_pipeline: the prepared tfds data dir.", **on)
    flags.DEFINE_string("json", None, "Write the records and the environment to this file.", **on)
    flags.DEFINE_bool("help", False, "Print this help.", short_name="h", **on)


def parse_flags(args: Sequence[str]) -> flags.FlagValues:
    """The benchmark's command line (without the program name) parsed; a :class:`UserError` for bad input."""
    argv = [PROGRAM, *args]
    values = flags.FlagValues()
    define_flags(values, argv)
    rest = config_lib.parse_config_flags(values, argv)
    if values.help:
        return values
    if rest[1:]:
        raise UserError(f"Unexpected arguments {rest[1:]}; {PROGRAM} --help lists the flags.")
    unknown = [mode for mode in values.modes if mode not in MODES]
    if unknown:
        raise UserError(f"--modes: {', '.join(unknown)} is not a mode; use some of {', '.join(MODES)}.")
    if values.config is None and not values.input_pipeline:
        raise UserError(
            "Nothing to run: give a workload, --config=configs/x.py[:ARG], or --input_pipeline=NAME."
        )
    runs = len(values.heads or [None]) * len(values.dtypes or [None])
    if values.workdir and "tta" in values.modes and runs > 1:
        raise UserError(
            "--workdir keeps one tta run: give at most one --heads and one --dtypes value with it."
        )
    workload_configs(values)  # each run's config validated before anything runs
    return values


def workload_configs(values: flags.FlagValues) -> list[ml_collections.ConfigDict]:
    """The workload's config (``values.config``, as ``train.py`` reads the same flags) once per ``--heads`` x
    ``--dtypes`` value, each validated; none without ``--config``."""
    if values.config is None:
        return []
    heads = values.heads or [values.config.model.head]
    dtypes = values.dtypes or [values.config.dtype]
    configs = []
    for head, dtype in itertools.product(heads, dtypes):
        config = values.config.copy_and_resolve_references()
        config.model.head, config.dtype = head, dtype
        config_lib.validate_config(config)
        configs.append(config)
    return configs


def workload_shape(config: ml_collections.ConfigDict) -> tuple[int, tuple[int, int, int]]:
    """The classes and the ``(H, W, C)`` images a benchmark feeds ``config``'s model: ``model.num_classes``
    (the model's registry default when 0) and ``data.image_size`` squares (its input size when 0)."""
    spec = get_spec(config.model.name)
    height, width, channels = spec.input_shape
    size = config.data.image_size
    return config.model.num_classes or spec.num_classes, (size or height, size or width, channels)


def workload_label(config: ml_collections.ConfigDict) -> str:
    """``model:head``, the name of a workload in records and tables."""
    return f"{config.model.name}:{config.model.head}"


def _peak_flops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for (name, dt), value in PEAK_FLOPS.items():
        if name in kind and dt == dtype:
            return value
    return None


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _step_flops(p_state: Any, p_batch: dict[str, jax.Array], label_smoothing: float) -> float | None:
    """FLOPs of one train step on one device's batch, from XLA's cost analysis of the *lowered* (unoptimised)
    HLO of the step (vmapped over the leading device axis of ``p_state`` / ``p_batch``, which binds the
    model's BatchNorm axis as pmap does).

    The compiled GPU executable's analysis leaves out cuDNN convolutions (custom calls) and counts a
    scanned loop's body once, so it is not used.
    """
    options = steps.StepOptions(label_smoothing=label_smoothing)
    step = functools.partial(steps.train_step, options=options, axis_name=steps.AXIS)
    traced = jax.jit(jax.vmap(step, axis_name=steps.AXIS)).trace(p_state, p_batch)
    # jax 0.11.2 on a GPU returned no analysis for the GPU lowering (H200, 2026-11-26): fall back to the
    # same step lowered for the CPU, whose HLO cost analysis counts the same convolutions and matmuls.
    for platforms in (None, ("cpu",)):
        lowered = traced.lower() if platforms is None else traced.lower(lowering_platforms=platforms)
        cost = lowered.cost_analysis()
        if isinstance(cost, list):
            cost = cost[0] if cost else {}
        flops = (cost or {}).get("flops")
        if flops:
            return float(flops)
    return None


def _scan_steps(
    state: steps.TrainState, data: steps.Batch, *, label_smoothing: float
) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """:func:`steps.train_step` over the leading (step) axis of ``data``; the last step's metrics."""
    options = steps.StepOptions(label_smoothing=label_smoothing)
    step = functools.partial(steps.train_step, options=options, axis_name=steps.AXIS)
    state, metrics = jax.lax.scan(step, state, data)
    return state, jax.tree.map(lambda m: m[-1], metrics)


def _step_function(mode: str, label_smoothing: float, seeds: bool = False) -> Any:
    """The pmapped function a ``mode`` times: one train step, or a scanned epoch of them; with
    ``seeds``, of a stacked state of seed replicas, each on its own batches (``jax.vmap``)."""
    if mode == "step":
        return steps.pmap_train_step(steps.StepOptions(label_smoothing=label_smoothing), seeds=seeds)
    scan = functools.partial(_scan_steps, label_smoothing=label_smoothing)
    return jax.pmap(jax.vmap(scan) if seeds else scan, axis_name=steps.AXIS, donate_argnums=(0,))


def synthetic_batches(
    seed: int, batch: int, image_shape: tuple[int, int, int], num_classes: int, num_steps: int = 0
) -> dict[str, np.ndarray]:
    """Normal images and uniform labels: one batch, or ``num_steps`` stacked batches when > 0."""
    rng = np.random.default_rng(seed)
    lead = (num_steps, batch) if num_steps else (batch,)
    return {
        "image": rng.standard_normal((*lead, *image_shape), np.float32),
        "label": rng.integers(0, num_classes, lead).astype(np.int32),
    }


def run_workload(
    config: ml_collections.ConfigDict, *, mode: str, steps_per_window: int, windows: int
) -> dict[str, Any]:
    """Time ``config``'s train step in ``mode`` ('step' or 'scan') on one device; a JSON-able record.

    With ``config.num_seeds`` S > 1, S seed replicas train in one program, each on its own batches;
    images/s and FLOPs count the images of all replicas, ``step_ms`` is one step of all of them.
    """
    if mode not in THROUGHPUT_MODES:
        raise UserError(f"Unknown mode {mode!r}: use one of {THROUGHPUT_MODES}.")
    num_classes, image_shape = workload_shape(config)
    batch, num_seeds = config.data.batch_size, config.num_seeds
    model = build.build_model(config, num_classes)
    states, _ = build.build_replica_states(config, model, image_shape, steps_per_window, batch)
    num_steps = steps_per_window if mode == "scan" else 0
    batches = [
        synthetic_batches(config.seed + r, batch, image_shape, num_classes, num_steps)
        for r in range(num_seeds)
    ]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(states[0].params))
    state, data = (states[0], batches[0]) if num_seeds == 1 else map(steps.stack_replicas, (states, batches))
    p_state, p_data = jax_utils.replicate((state, data), devices=jax.local_devices()[:1])
    function = _step_function(mode, config.label_smoothing, seeds=num_seeds > 1)
    start = time.perf_counter()
    compiled = function.lower(p_state, p_data).compile()
    compile_s = time.perf_counter() - start
    one_state, one_batch = jax_utils.replicate((states[0], batches[0]), devices=jax.local_devices()[:1])
    one_batch = jax.tree.map(lambda a: a[:, 0], one_batch) if mode == "scan" else one_batch
    flops_per_step = _step_flops(one_state, one_batch, config.label_smoothing)
    calls = steps_per_window if mode == "step" else 1
    images = num_seeds * batch
    rates, loss = _time_windows(compiled, p_state, p_data, calls, windows, images * steps_per_window)
    flops = flops_per_step * num_seeds if flops_per_step else None
    return {
        "impl": "jax",
        "workload": workload_label(config),
        "mode": mode,
        "dtype": config.dtype,
        "batch": batch,
        "num_seeds": num_seeds,
        "params": n_params,
        "compile_s": round(compile_s, 2),
        **_throughput_figures(rates, images, flops, config.dtype),
        "final_loss": loss,
    }


def _time_windows(
    compiled: Any, p_state: Any, p_data: Any, calls: int, windows: int, images_per_window: int
) -> tuple[list[float], float]:
    """Images/s of each of ``windows`` windows of ``calls`` calls (after one warm-up call), and the loss
    of the last step."""
    p_state, metrics = compiled(p_state, p_data)  # warm-up
    jax.block_until_ready(metrics)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            p_state, metrics = compiled(p_state, p_data)
        jax.block_until_ready(metrics)
        rates.append(images_per_window / (time.perf_counter() - start))
    return rates, float(np.ravel(metrics["loss"][0])[0])


def _throughput_figures(
    rates: list[float], batch: int, flops_per_step: float | None, dtype: str
) -> dict[str, Any]:
    """Images/s (median and best window), step time, peak memory, FLOPs per image, achieved FLOP/s, MFU."""
    img_s = statistics.median(rates)
    peak = _peak_flops(dtype)
    flops_per_image = flops_per_step / batch if flops_per_step else None
    achieved = flops_per_image * img_s if flops_per_image else None
    return {
        "img_s_median": round(img_s, 1),
        "img_s_max": round(max(rates), 1),
        "step_ms": round(1000 * batch / img_s, 3),
        "peak_memory_bytes": _peak_memory(),
        "gflop_per_image": round(flops_per_image / 1e9, 4) if flops_per_image else None,
        "achieved_tflop_s": round(achieved / 1e12, 2) if achieved else None,
        "mfu": round(achieved / peak, 4) if achieved and peak else None,
    }


def environment() -> dict[str, Any]:
    """The card and the versions, recorded with every figure."""
    import flax
    import optax

    dev = jax.devices()[0]
    return {
        "device": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def load_config(spec: str, *overrides: str) -> ml_collections.ConfigDict:
    """``configs/x.py[:ARG]`` with ``--config.FIELD=VALUE`` overrides: the config ``train.py`` trains for
    the same flags (:func:`spinal_jax.config.load_config_file`)."""
    return config_lib.load_config_file(spec, overrides)


def time_to_accuracy(
    config: ml_collections.ConfigDict,
    target: float,
    *,
    label: str = "",
    split: str = "test",
    workdir: str | Path | None = None,
    pipeline: Any = None,
    model: Any = None,
) -> dict[str, Any]:
    """Train ``config`` from scratch (``training.train_and_evaluate``) and report its time to accuracy.

    ``seconds_to_target`` is the ``train_seconds_total`` of the first epoch whose ``split`` accuracy
    reached ``target`` (training wall time after compilation, evaluation included; in the per-step mode
    it includes the step's compilation); ``wall_s`` is the whole call. The workdir is temporary unless
    given (then it must not hold another run). With ``config.num_seeds`` S > 1 the record has each
    replica's figures under ``replicas``; its own are those of the last replica to reach the target,
    the mean of the maximum accuracies, and the images/s of all S.
    """
    from spinal_jax import training

    config = config.copy_and_resolve_references()
    config.tensorboard = False  # the bench imports no tensorboardX
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="spinal_tta_") if own else workdir)
    try:
        start = time.perf_counter()
        summary = training.train_and_evaluate(config, workdir, pipeline=pipeline, model=model)
        wall = time.perf_counter() - start
        dirs = workdir_lib.replica_dirs(config, workdir)
        histories = [json.loads((d / "summary.json").read_text())["history"] for d in dirs]
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    summaries = summary.get("replicas", [summary])
    batch = config.data.batch_size
    figures = [
        _accuracy_figures(s, h, target, split, batch) for s, h in zip(summaries, histories, strict=True)
    ]
    record = {
        "kind": "time_to_accuracy",
        "config": label,
        "workload": workload_label(config),
        "dtype": config.dtype,
        "batch": batch,
        "num_seeds": config.num_seeds,
        "device_resident": bool(config.data.device_resident),
        "epochs": len(histories[0]),
        "target": target,
        "split": split,
        "wall_s": _round(wall),
        **figures[0],
    }
    if config.num_seeds > 1:
        record.update(_slowest_replica(figures, split), replicas=figures)
        record["train_img_s"] = round(record["train_img_s"] * config.num_seeds, 1)
    return record


def _slowest_replica(figures: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """Time to target of the last replica to reach it (None unless all did), mean maximum accuracy."""
    reached = [f for f in figures if f["seconds_to_target"] is not None]
    last = max(reached, key=lambda f: f["seconds_to_target"]) if len(reached) == len(figures) else None
    maxima = [f[f"max_{split}_accuracy"] for f in figures if f[f"max_{split}_accuracy"] is not None]
    return {
        "seconds_to_target": last["seconds_to_target"] if last else None,
        "epochs_to_target": last["epochs_to_target"] if last else None,
        f"max_{split}_accuracy": statistics.mean(maxima) if maxima else None,
    }


def _accuracy_figures(
    summary: dict[str, Any], history: list[dict[str, Any]], target: float, split: str, batch: int
) -> dict[str, Any]:
    """A run's time to ``target`` on ``split``, its training time and throughput, and its accuracies."""
    key = f"{split}_accuracy"
    reached = next((h for h in history if h.get(key) is not None and h[key] >= target), None)
    epoch_s = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    accuracies = [h[key] for h in history if h.get(key) is not None]
    train_s = summary.get("train_seconds_total")
    return {
        "compile_s": _round(summary.get("compile_seconds")),
        "seconds_to_target": _round(reached["train_seconds_total"]) if reached else None,
        "epochs_to_target": reached["epoch"] if reached else None,
        "train_seconds_total": _round(train_s),
        "epoch_s_median": _round(statistics.median(epoch_s)) if epoch_s else None,
        "train_img_s": round(summary["step"] * batch / train_s, 1) if train_s else None,
        f"max_{split}_accuracy": max(accuracies) if accuracies else None,
        "max_test_over_epochs": summary.get("max_test_over_epochs"),
        "test_at_best_validation": summary.get("test_at_best_validation"),
        f"{split}_accuracy_per_epoch": accuracies,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def input_pipeline(
    dataset: str = "mnist", images: int = 2000, threads: int = 0, batch: int = 100, data_dir: str = ""
) -> dict[str, Any]:
    """Host input-pipeline images/s of ``dataset``'s train split with its reference augmentation on the
    host: the per-example transform on one core, and the grain train iterator with ``threads`` threads
    (:mod:`spinal_jax.data.throughput`)."""
    from spinal_jax.data import create_input_pipeline, default_data_config, throughput

    threads = threads or os.cpu_count() or 1
    c = default_data_config()
    c.update(name=dataset, batch_size=batch, num_threads=threads, prefetch=max(8, threads), data_dir=data_dir)
    pipe = create_input_pipeline(c, local_device_count=1, process_index=0, process_count=1)
    per_core = throughput._per_core(pipe, images)
    wall, per_cpu = throughput._pipeline(pipe, max(2, images // batch))
    return {
        "kind": "input_pipeline",
        "dataset": dataset,
        "policy": pipe.policy,
        "batch": batch,
        "threads": threads,
        "img_s_per_core": round(per_core, 1),
        "img_s_wall": round(wall, 1),
        "img_per_cpu_s": round(per_cpu, 1),
    }


def run_benchmarks(values: flags.FlagValues) -> list[dict[str, Any]]:
    """Every record the parsed flags ask for (see :func:`parse_flags`), each printed as a JSON line."""
    records = []
    if values.input_pipeline:
        records.append(input_pipeline(values.input_pipeline, values.input_images, data_dir=values.data_dir))
        print(json.dumps(records[-1]), flush=True)
    source = {}
    if values.config is not None:
        source = {
            "config": config_flags.get_config_filename(values["config"]),
            "overrides": config_flags.get_override_values(values["config"]),
        }
    for config, mode in itertools.product(workload_configs(values), values.modes):
        if mode == "tta":
            record = time_to_accuracy(
                config,
                values.target,
                label=source["config"],
                split=values.target_split,
                workdir=values.workdir,
            )
        else:
            record = run_workload(config, mode=mode, steps_per_window=values.steps, windows=values.windows)
        records.append({**record, **source})
        print(json.dumps(records[-1], default=str), flush=True)
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    """The throughput records as an aligned text table."""
    cols = [
        "workload",
        "mode",
        "dtype",
        "batch",
        "num_seeds",
        "img_s_median",
        "step_ms",
        "compile_s",
        "gflop_per_image",
        "mfu",
        "peak_memory_bytes",
    ]
    rows = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def describe(record: dict[str, Any]) -> str | None:
    """One line for a time-to-accuracy or input-pipeline record (None for a throughput record)."""
    if record.get("kind") == "time_to_accuracy":
        split = record["split"]
        seeds = record.get("num_seeds", 1)
        label = record["config"] + (
            f" ({seeds} seeds: the last to reach it, the mean maximum)" if seeds > 1 else ""
        )
        return (
            f"{label}: compile {record['compile_s']} s; {split} accuracy >= {record['target']} "
            f"after {record['seconds_to_target']} s (epoch {record['epochs_to_target']}); {record['epochs']} "
            f"epochs in {record['train_seconds_total']} s ({record['train_img_s']} img/s), wall "
            f"{record['wall_s']} s; max {split} accuracy {record[f'max_{split}_accuracy']}"
        )
    if record.get("kind") == "input_pipeline":
        return (
            f"host pipeline {record['dataset']} ({record['policy']}): {record['img_s_per_core']} img/s on "
            f"one core; grain iterator ({record['threads']} threads) {record['img_s_wall']} img/s wall, "
            f"{record['img_per_cpu_s']} per CPU-s"
        )
    return None


def main(args: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark for the command line ``args`` (default: ``sys.argv[1:]``); returns the records."""
    values = parse_flags(sys.argv[1:] if args is None else args)
    if values.help:
        print(__doc__)
        print(values.get_help())
        return []
    env = environment()
    print(json.dumps(env), flush=True)
    records = run_benchmarks(values)
    throughput = [r for r in records if "kind" not in r]
    if throughput:
        print(format_table(throughput))
    for line in filter(None, map(describe, records)):
        print(line)
    if values.json:
        Path(values.json).write_text(
            json.dumps({"environment": env, "records": records}, indent=1, default=str)
        )
    return records


if __name__ == "__main__":
    run_cli(main)
