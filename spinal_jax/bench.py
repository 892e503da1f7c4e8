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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import time
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
    step = jax.jit(functools.partial(steps.train_step, axis_name=None))
    cost = step.lower(state, batch).cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


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
        "--workloads", default="vgg5:spinal,vgg5:default", help="comma-separated model:head[:field=value...]"
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    parser.add_argument("--modes", default="step", help="comma-separated: step,scan")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing window (= scanned epoch)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--recipe", default="adam", choices=sorted(RECIPES))
    parser.add_argument("--json", default=None, help="write the records and the environment here")
    args = parser.parse_args(argv)
    env = environment()
    print(json.dumps(env))
    records = []
    for text in args.workloads.split(","):
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
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "records": records}, f, indent=1)
    return records


if __name__ == "__main__":
    main()
