"""Training-step benchmarks on synthetic device-resident data.

    python -m spinal_jax.bench --workloads vgg5:spinal,vgg5:default --batch 100 --json bench.json
    python -m spinal_jax.bench --workloads resnet50:spinal --batch 256 --dtypes bfloat16 --modes step

For each workload (``model:head``), compute dtype and mode it prints and records: images/s (median of
``--windows`` windows of ``--steps`` steps), step time, compile time, peak device memory, XLA's FLOP
count of one step and the model FLOPs utilisation against the device's peak.

Modes:
  step  one jitted train step called from Python per batch (the CPU path);
  scan  a whole epoch of ``--steps`` batches compiled as one ``lax.scan`` over device-resident data
        (the accelerator path: no per-step dispatch or host transfer).
The step is :func:`spinal_jax.steps.train_step` (the one training uses), on one device.

Time to accuracy: a whole training run (``training.train_and_evaluate``) of a config file, e.g. the
device-resident SpinalVGG-5 MNIST protocol:

    python -m spinal_jax.bench --tta configs/mnist_vgg5_fast.py:bf16 --target 0.995 --epochs 20

records compile seconds, the training seconds (after compilation; evaluation included) until the test
accuracy first reached ``--target``, the run's total wall time (data loading and compilation included)
and the best test accuracy. ``--input-pipeline mnist`` adds a row of host input-pipeline images/s
(:mod:`spinal_jax.data.throughput`: per-example transform on one core, and the grain train iterator).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spinal_jax import optim, steps
from spinal_jax.models import create_model, get_spec

# Dense peak FLOP/s by device kind and compute dtype (vendor figures; fp32 matmuls use TF32 on Hopper).
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989.4e12,
    ("H100", "float32"): 494.7e12,
    ("H200", "bfloat16"): 989.4e12,
    ("H200", "float32"): 494.7e12,
    ("A100", "bfloat16"): 312e12,
    ("A100", "float32"): 156e12,
}

# Optimisers of the reference recipes: Adam 5e-3 (VGG-5 family), SGD momentum (ImageNet / the anchor).
RECIPES = {
    "adam": dict(name="adam", learning_rate=5e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    "sgd": dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=1e-4),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model configuration to time: ``model:head`` plus optional ``key=value`` model overrides."""

    model: str
    head: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Workload:
        parts = text.split(":")
        model, head = parts[0], parts[1] if len(parts) > 1 else "spinal"
        overrides = []
        for item in parts[2:]:
            key, _, value = item.partition("=")
            overrides.append((key, json.loads(value) if value[:1] in "0123456789-tfn[" else value))
        return cls(model, head, tuple(overrides))

    @property
    def label(self) -> str:
        extra = "".join(f":{k}={v}" for k, v in self.overrides)
        return f"{self.model}:{self.head}{extra}"


def _optimizer(recipe: str) -> Any:
    cfg = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.01,
            momentum=0.0,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
        )
    )
    cfg.update(RECIPES[recipe])
    return optim.create_optimizer(cfg, cfg.learning_rate)


def _peak_flops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for (name, dt), value in PEAK_FLOPS.items():
        if name in kind and dt == dtype:
            return value
    return None


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _step_flops(state: Any, batch: dict[str, jax.Array]) -> float | None:
    """FLOPs of one train step on ``batch``, from XLA's cost analysis of the *lowered* (unoptimised) HLO.

    The compiled GPU executable's analysis leaves out cuDNN convolutions (custom calls) and counts a
    scanned loop's body once, so it is not used.
    """
    traced = jax.jit(functools.partial(steps.train_step, axis_name=None)).trace(state, batch)
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


def run_workload(
    workload: Workload,
    *,
    batch: int,
    dtype: str,
    mode: str,
    steps_per_window: int,
    windows: int,
    recipe: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Time one workload; returns a JSON-able record."""
    spec = get_spec(workload.model)
    model = create_model(
        workload.model,
        spec.num_classes,
        head=workload.head,
        dtype=jnp.dtype(dtype),
        **dict(workload.overrides),
    )
    state = steps.create_train_state(jax.random.key(seed), model, spec.input_shape, _optimizer(recipe))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    rng = np.random.default_rng(seed)
    if mode == "step":
        data = {
            "image": jnp.asarray(rng.standard_normal((batch, *spec.input_shape), np.float32)),
            "label": jnp.asarray(rng.integers(0, spec.num_classes, batch), jnp.int32),
        }
        step = jax.jit(functools.partial(steps.train_step, axis_name=None), donate_argnums=(0,))
        images_per_call, calls = batch, steps_per_window
    elif mode == "scan":
        data = {
            "image": jnp.asarray(
                rng.standard_normal((steps_per_window, batch, *spec.input_shape), np.float32)
            ),
            "label": jnp.asarray(rng.integers(0, spec.num_classes, (steps_per_window, batch)), jnp.int32),
        }

        def epoch(state: Any, data: dict[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
            body = functools.partial(steps.train_step, axis_name=None)
            state, metrics = jax.lax.scan(body, state, data)
            return state, jax.tree.map(lambda m: m[-1], metrics)

        step = jax.jit(epoch, donate_argnums=(0,))
        images_per_call, calls = batch * steps_per_window, 1
    else:
        raise ValueError(f"Unknown mode {mode!r}: use 'step' or 'scan'.")

    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    one_batch = jax.tree.map(lambda a: a[0], data) if mode == "scan" else data
    flops_per_step = _step_flops(state, one_batch)
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(calls):
            state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        rates.append(images_per_call * calls / (time.perf_counter() - t))
    img_s = statistics.median(rates)
    peak = _peak_flops(dtype)
    flops_per_image = flops_per_step / batch if flops_per_step else None
    achieved = flops_per_image * img_s if flops_per_image else None
    return {
        "impl": "jax",
        "workload": workload.label,
        "mode": mode,
        "dtype": dtype,
        "batch": batch,
        "params": n_params,
        "img_s_median": round(img_s, 1),
        "img_s_max": round(max(rates), 1),
        "step_ms": round(1000 * batch / img_s, 3),
        "compile_s": round(compile_s, 2),
        "peak_memory_bytes": _peak_memory(),
        "gflop_per_image": round(flops_per_image / 1e9, 4) if flops_per_image else None,
        "achieved_tflop_s": round(achieved / 1e12, 2) if achieved else None,
        "mfu": round(achieved / peak, 4) if achieved and peak else None,
        "final_loss": float(metrics["loss"]),
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
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``path/to/config.py[:ARG]`` -> that file's ``get_config(ARG)`` (as ``train.py --config`` reads it)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_bench_config_{Path(path).stem}", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"No config file {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """``FIELD=VALUE`` strings (``data.batch_size=200``, ``dtype=bfloat16``) set on ``config``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: use FIELD=VALUE.")
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise ValueError(f"--set {item!r}: the config has no field {key!r}.")
        node[leaf] = _parse_value(value)


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
    given (then it must not hold another run).
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
        history = json.loads((workdir / "summary.json").read_text())["history"]
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    key = f"{split}_accuracy"
    reached = next((h for h in history if h.get(key) is not None and h[key] >= target), None)
    steps_done = summary["step"]
    epoch_s = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    accuracies = [h[key] for h in history if h.get(key) is not None]
    return {
        "kind": "time_to_accuracy",
        "config": label,
        "workload": f"{config.model.name}:{config.model.head}",
        "dtype": config.dtype,
        "batch": config.data.batch_size,
        "device_resident": bool(config.data.get("device_resident", False)),
        "epochs": len(history),
        "target": target,
        "split": split,
        "compile_s": _round(summary.get("compile_seconds")),
        "seconds_to_target": _round(reached["train_seconds_total"]) if reached else None,
        "epochs_to_target": reached["epoch"] if reached else None,
        "train_seconds_total": _round(summary.get("train_seconds_total")),
        "wall_s": _round(wall),
        "epoch_s_median": _round(statistics.median(epoch_s)) if epoch_s else None,
        "train_img_s": round(steps_done * config.data.batch_size / summary["train_seconds_total"], 1)
        if summary.get("train_seconds_total")
        else None,
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


def format_table(records: list[dict[str, Any]]) -> str:
    cols = [
        "workload",
        "mode",
        "dtype",
        "batch",
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma-separated model:head[:field=value...] (default vgg5:spinal,vgg5:default, unless --tta "
        "or --input-pipeline is given)",
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    parser.add_argument("--modes", default="step", help="comma-separated: step,scan")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing window (= scanned epoch)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--recipe", default="adam", choices=sorted(RECIPES))
    parser.add_argument("--json", default=None, help="write the records and the environment here")
    parser.add_argument("--tta", default=None, help="time to accuracy of a config file: CONFIG.py[:ARG]")
    parser.add_argument("--target", type=float, default=0.995, help="--tta: the target accuracy")
    parser.add_argument("--target-split", default="test", choices=["test", "validation"])
    parser.add_argument("--epochs", type=int, default=0, help="--tta: epochs to train (0: the config's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="--tta: config override (repeat)"
    )
    parser.add_argument("--workdir", default=None, help="--tta: keep the run here (default: a temporary dir)")
    parser.add_argument("--input-pipeline", default=None, metavar="DATASET", help="host pipeline img/s row")
    parser.add_argument("--input-images", type=int, default=2000)
    parser.add_argument("--data-dir", default="", help="--input-pipeline: the prepared tfds data dir")
    args = parser.parse_args(argv)
    if args.workloads is None:
        args.workloads = "" if (args.tta or args.input_pipeline) else "vgg5:spinal,vgg5:default"
    env = environment()
    print(json.dumps(env))
    records = []
    if args.input_pipeline:
        record = input_pipeline(args.input_pipeline, args.input_images, data_dir=args.data_dir)
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.tta:
        config = load_config(args.tta)
        apply_overrides(config, args.set)
        if args.epochs:
            config.num_epochs = args.epochs
        record = time_to_accuracy(
            config, args.target, label=args.tta, split=args.target_split, workdir=args.workdir
        )
        print(json.dumps(record), flush=True)
        records.append(record)
    for text in filter(None, args.workloads.split(",")):
        for dtype in args.dtypes.split(","):
            for mode in args.modes.split(","):
                record = run_workload(
                    Workload.parse(text),
                    batch=args.batch,
                    dtype=dtype,
                    mode=mode,
                    steps_per_window=args.steps,
                    windows=args.windows,
                    recipe=args.recipe,
                )
                print(json.dumps(record), flush=True)
                records.append(record)
    workloads = [r for r in records if "kind" not in r]
    if workloads:
        print(format_table(workloads))
    for r in records:
        if r.get("kind") == "time_to_accuracy":
            split = r["split"]
            print(
                f"{r['config']}: compile {r['compile_s']} s; {split} accuracy >= {r['target']} after "
                f"{r['seconds_to_target']} s (epoch {r['epochs_to_target']}); {r['epochs']} epochs in "
                f"{r['train_seconds_total']} s ({r['train_img_s']} img/s), wall {r['wall_s']} s; "
                f"max {split} accuracy {r[f'max_{split}_accuracy']}"
            )
        elif r.get("kind") == "input_pipeline":
            print(
                f"host pipeline {r['dataset']} ({r['policy']}): {r['img_s_per_core']} img/s on one core; "
                f"grain iterator ({r['threads']} threads) {r['img_s_wall']} img/s wall, "
                f"{r['img_per_cpu_s']} per CPU-s"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "records": records}, f, indent=1)
    return records


if __name__ == "__main__":
    main()
