"""The training loop: ``train_and_evaluate(config, workdir)``, as run by ``python train.py``.

One process per host feeds its own shard of every global batch to its local devices; the pmapped step
(:mod:`spinal_jax.steps`) averages gradients over all devices of all processes. After every epoch the
validation and test splits are evaluated over every example, the plateau rule (if enabled) reacts to
the monitored accuracy, and a checkpoint is written (:mod:`spinal_jax.checkpoints`). A restarted run
resumes from the workdir's latest readable checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import jax_utils

from spinal_jax import checkpoints, finetune, optim, steps
from spinal_jax import config as config_lib
from spinal_jax import metrics as metrics_lib

log = logging.getLogger(__name__)
PLOT_EVERY_SECONDS = 30.0  # learning curves are redrawn at most this often (and at the end)


def per_device_batch_size(global_batch: int, local_devices: int, processes: int) -> int:
    """``global_batch / (local_devices * processes)``; a ValueError saying how to fix it otherwise."""
    devices = local_devices * processes
    if global_batch <= 0 or global_batch % devices:
        raise ValueError(
            f"config.data.batch_size={global_batch} (the global batch) must be a positive multiple of the "
            f"{devices} devices ({processes} process(es) x {local_devices} local devices); e.g. use "
            f"--config.data.batch_size={max(1, round(global_batch / devices)) * devices}."
        )
    return global_batch // devices


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """The configured model, with cross-device BatchNorm over :data:`steps.AXIS` and ``config.dtype``."""
    from spinal_jax.models import create_model as registry_create

    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    kwargs = config.model.get("kwargs")
    return registry_create(
        config.model.name,
        num_classes,
        head=config.model.head,
        dtype=dtype,
        bn_axis_name=steps.AXIS,
        **(kwargs.to_dict() if kwargs else {}),
    )


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}.", sub)
        else:
            out[prefix[:-1]] = value

    walk("", json.loads(config.to_json_best_effort()))
    return out


def prepare_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Store the config as ``config.json``; refuse a workdir holding a run of a different config.

    With ``config.overwrite`` the old run's checkpoints and logs are removed instead.
    """
    path = workdir / "config.json"
    if path.exists():
        stored = _flat(ml_collections.ConfigDict(json.loads(path.read_text())))
        current = _flat(config)
        keys = set(stored) | set(current)
        differ = sorted(
            k for k in keys if k not in config_lib.RESUMABLE_FIELDS and stored.get(k) != current.get(k)
        )
        if differ and not config.overwrite:
            shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differ[:5])
            raise ValueError(
                f"Workdir {workdir} holds a run of a different config ({shown}). Use another --workdir, "
                "or pass --config.overwrite=True to delete that run and start again."
            )
        if differ and jax.process_index() == 0:
            log.warning("config.overwrite=True: deleting the previous run in %s", workdir)
            for name in ("checkpoints", "best", "tb"):
                shutil.rmtree(workdir / name, ignore_errors=True)
            for name in ("metrics.jsonl", "summary.json", "learning_curves.png"):
                (workdir / name).unlink(missing_ok=True)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2))
    _barrier("prepare_workdir")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def evaluate(p_eval: Callable[..., Any], p_state: Any, pipe: Any, split: str) -> dict[str, float]:
    """Accuracy (top-1, top-5), mean loss and count over every example of ``split``.

    Raises a RuntimeError when the pipeline's batches do not hold exactly ``num_examples[split]``
    real examples.
    """
    totals = None
    for batch in pipe.eval_batches(split):
        sums = p_eval(p_state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise RuntimeError(f"The {split!r} split yielded no batches.")
    totals = jax.tree.map(lambda x: float(np.asarray(x)[0]), jax.device_get(totals))
    count = int(round(totals["count"]))
    expected = pipe.num_examples[split]
    if count != expected:
        raise RuntimeError(f"Evaluated {count} examples of {split!r}, the split has {expected}.")
    return {
        "accuracy": totals["correct"] / count,
        "top5": totals["correct_top5"] / count,
        "loss": totals["loss_sum"] / count,
        "count": count,
    }


class _StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks after every step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, pipeline: Any = None, model: Any = None
) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and return the summary.

    Args:
      config: a config built on :func:`spinal_jax.config.base_config`.
      workdir: where checkpoints, logs, curves and ``summary.json`` go.
      pipeline: an input pipeline with the ``spinal_jax.data`` interface; built from ``config.data``
        when None.
      model: a Linen module following the spinal_jax model convention (``bn_axis_name='batch'`` for
        synchronised BatchNorm); built from ``config.model`` when None.

    Returns:
      The summary (see :func:`spinal_jax.metrics.summarize`) plus ``status``: 'finished' or
      'interrupted' (a SIGTERM / Ctrl-C saved a checkpoint; rerun the same command to resume).
    """
    config_lib.validate_config(config)
    workdir = Path(workdir).resolve()
    per_device_batch_size(config.data.batch_size, jax.local_device_count(), jax.process_count())
    if pipeline is None:
        from spinal_jax.data import create_input_pipeline

        pipeline = create_input_pipeline(config.data)
    pipe = pipeline
    prepare_workdir(config, workdir)
    is_chief = jax.process_index() == 0

    num_classes = config.model.num_classes or pipe.num_classes
    if model is None:
        model = create_model(config, num_classes)
    spe = pipe.steps_per_epoch
    total_steps = config.num_epochs * spe
    if config.max_train_steps:
        total_steps = min(total_steps, config.max_train_steps)
    base_lr = optim.base_learning_rate(config.optim, pipe.global_batch_size)
    lr = optim.create_schedule(config.schedule, base_lr, spe, config.num_epochs)
    tx = finetune.create_optimizer(config, base_lr if config.schedule.name == "constant" else lr)
    state = steps.create_train_state(jax.random.PRNGKey(config.seed), model, pipe.image_shape, tx)
    state = finetune.adapt_train_state(config, state)  # linear_probe: backbone BN statistics kept

    ckpt = checkpoints.Checkpoints(workdir, keep=config.keep_checkpoints, use_async=config.async_checkpoints)
    resident = _resident_data(config, pipe, total_steps)
    train_iter = resident if resident is not None else pipe.train_iterator()
    plateau = optim.PlateauRule(
        base_lr, config.plateau.power, config.seed, mode=config.plateau.mode, factor=config.plateau.factor
    )
    loop: dict[str, Any] = {"step": 0, "history": [], "best_validation": None, "epoch_sums": [0.0, 0.0, 0]}
    restored = ckpt.restore(state)
    if restored is not None:
        state, data_state, loop, step = restored
        train_iter.set_state(data_state)
        plateau.load_state_dict(loop["plateau"])
        log.info("Resumed from %s/%d (epoch %d)", ckpt.latest_dir, step, step // spe)
    elif config.init_from:
        state = checkpoints.load_params(config.init_from, state)
    elif config.pretrained:
        state = finetune.load_pretrained_state(config, model, state)
    elif ckpt.latest.all_steps():
        log.warning("No checkpoint in %s could be read: starting from scratch.", ckpt.latest_dir)

    writer = metrics_lib.MetricWriter(workdir, enabled=is_chief, tensorboard=config.get("tensorboard", True))
    p_train = steps.pmap_train_step(config.label_smoothing, _device_augment(config, pipe))
    p_eval = steps.pmap_eval_step()
    p_state = steps.on_devices(jax_utils.replicate(state))  # as pmap outputs: no recompilation later
    splits = _eval_splits(config, pipe)
    compile_seconds = resident.compile(p_state) if resident is not None else None
    if compile_seconds is not None:
        log.info("Compiled the epoch and the evaluation in %.1f s", compile_seconds)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=loop["step"], disable=not is_chief, unit="step", dynamic_ncols=True)
    pending: list[dict[str, jax.Array]] = []
    last_good = loop["step"]
    timer = [time.perf_counter(), loop["step"]]
    # Training wall time (evaluation and bookkeeping included; compilation too in the per-step mode, whose
    # first step compiles), carried over resumes; read time-to-accuracy off the epoch records.
    carried = float(loop["history"][-1].get("train_seconds_total", 0.0)) if loop["history"] else 0.0
    clock = {"start": time.perf_counter(), "carried": carried, "last": carried}
    clock.update(plotted=clock["start"], plotted_epochs=len(loop["history"]))  # first plot after 30 s
    best_pending: list[tuple[Any, ...]] = []  # a best epoch not yet written (checkpoint_every_epochs > 1)

    def flush() -> None:
        """Pull the pending step metrics to the host, stop on a non-finite loss, log their means."""
        nonlocal pending
        if not pending:
            return
        host = jax.device_get(pending)
        # Device 0's values, one per step: a step's metrics are scalars, a scanned epoch's (steps,).
        series = {k: np.concatenate([np.atleast_1d(m[k][0]) for m in host]) for k in host[0]}
        n = len(series["loss"])
        first = loop["step"] - n + 1
        bad = np.flatnonzero(~(np.isfinite(series["loss"]) & np.isfinite(series["grad_norm"])))
        if bad.size:
            i = int(bad[0])
            ckpt.wait()
            raise FloatingPointError(
                f"The training loss became {float(series['loss'][i])} (gradient norm "
                f"{float(series['grad_norm'][i])}) at step {first + i} (epoch {(first + i - 1) // spe + 1}). "
                f"Stopped; the last good checkpoint (step {last_good}) is kept in {ckpt.latest_dir}. "
                "Lower --config.optim.learning_rate (or add warm-up), or check the data for NaN/inf."
            )
        loss = float(np.mean(series["loss"]))
        acc = float(np.mean(series["accuracy"]))
        sums = loop["epoch_sums"]
        loop["epoch_sums"] = [sums[0] + loss * n, sums[1] + acc * n, sums[2] + n]
        now = time.perf_counter()
        rate = (loop["step"] - timer[1]) * pipe.global_batch_size / max(now - timer[0], 1e-9)
        timer[:] = [now, loop["step"]]
        lr_now = float(series["learning_rate"][-1])
        writer.write(
            loop["step"],
            "train",
            {"loss": loss, "accuracy": acc, "learning_rate": lr_now, "images_per_second": rate},
        )
        bar.set_postfix(
            epoch=(loop["step"] - 1) // spe + 1, loss=f"{loss:.4f}", acc=f"{acc:.4f}", img_s=f"{rate:.0f}"
        )
        pending = []

    def save(best: bool = False) -> None:
        nonlocal last_good
        flush()
        loop["plateau"] = plateau.state_dict()
        if best_pending and not best:  # a better epoch since the last save goes to best/ now
            ckpt.save(*best_pending[0], best=True, latest=False)
        best_pending.clear()
        ckpt.save(loop["step"], jax_utils.unreplicate(p_state), train_iter.get_state(), loop, best=best)
        last_good = loop["step"]

    def keep_best() -> None:
        """Hold a best epoch that is not due for a checkpoint (on the host); the next save writes it."""
        loop["plateau"] = plateau.state_dict()
        host_state = jax.device_get(jax_utils.unreplicate(p_state))
        best_pending[:] = [(loop["step"], host_state, train_iter.get_state(), copy.deepcopy(loop))]

    def plot() -> None:
        metrics_lib.plot_learning_curves(loop["history"], workdir / "learning_curves.png", config.model.name)
        clock["plotted"], clock["plotted_epochs"] = time.perf_counter(), len(loop["history"])

    def end_epoch() -> None:
        nonlocal p_state
        flush()
        epoch = loop["step"] // spe
        sums = loop["epoch_sums"]
        record: dict[str, Any] = {"epoch": epoch, "step": loop["step"]}
        if sums[2]:
            record.update(train_loss=sums[0] / sums[2], train_accuracy=sums[1] / sums[2])
        record["learning_rate"] = float(np.asarray(optim.current_learning_rate(p_state.opt_state))[0])
        if resident is not None:
            results = resident.evaluate(p_state)
        else:
            results = {split: evaluate(p_eval, p_state, pipe, split) for split in splits}
        for split in splits:
            result = results[split]
            record[f"{split}_accuracy"] = result["accuracy"]
            record[f"{split}_loss"] = result["loss"]
            if num_classes >= 100:
                record[f"{split}_top5"] = result["top5"]
        total = clock["carried"] + time.perf_counter() - clock["start"]
        record.update(epoch_seconds=total - clock["last"], train_seconds_total=total)
        clock["last"] = total
        if compile_seconds is not None:
            record["compile_seconds"] = compile_seconds
        loop["history"].append(record)
        loop["epoch_sums"] = [0.0, 0.0, 0]
        writer.write(loop["step"], "epoch", record)
        if is_chief:
            log.info("epoch %d: %s", epoch, json.dumps(record))
            if loop["step"] >= total_steps or time.perf_counter() - clock["plotted"] >= PLOT_EVERY_SECONDS:
                plot()
        if config.plateau.enabled:
            monitored = record.get(f"{config.plateau.monitor}_accuracy")
            if monitored is None:
                raise ValueError(
                    f"config.plateau.monitor={config.plateau.monitor!r} but that split is empty."
                )
            new_lr = plateau.update(monitored, record["learning_rate"])
            if new_lr is not None:
                p_state = p_state.replace(opt_state=optim.set_learning_rate(p_state.opt_state, new_lr))
                p_state = steps.on_devices(p_state)
        val = record.get("validation_accuracy")
        best = val is not None and (loop["best_validation"] is None or val > loop["best_validation"])
        if best:
            loop["best_validation"] = val
        if epoch % config.get("checkpoint_every_epochs", 1) == 0 or loop["step"] >= total_steps:
            save(best=best)
        elif best:
            keep_best()
        timer[:] = [time.perf_counter(), loop["step"]]  # img/s counts training time only

    status = "finished"
    try:
        with _StopSignal() as stop:
            while loop["step"] < total_steps:
                if resident is not None:  # one compiled epoch
                    p_state, step_metrics = resident.train_epoch(p_state, loop["step"] // spe)
                    done = spe
                else:
                    batch = next(train_iter)
                    p_state, step_metrics = p_train(p_state, batch)
                    done = 1
                pending.append(step_metrics)
                loop["step"] += done
                bar.update(done)
                if loop["step"] % config.log_every_steps == 0:
                    flush()
                if loop["step"] % spe == 0:
                    end_epoch()
                elif config.checkpoint_every_steps and loop["step"] % config.checkpoint_every_steps == 0:
                    save()
                every = spe if resident is not None else config.log_every_steps
                if _stop_agreed(stop, loop["step"], every):
                    if loop["step"] != last_good:
                        save()
                    status = "interrupted"
                    log.warning(
                        "Signal %s: saved step %d to %s; run the same command again to resume.",
                        stop.received,
                        loop["step"],
                        ckpt.latest_dir,
                    )
                    break
            if status == "finished" and loop["step"] != last_good:
                save()  # a run cut short by max_train_steps
        if is_chief and clock["plotted_epochs"] != len(loop["history"]):
            plot()  # the epochs since the last plot
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()
        writer.close()

    summary = metrics_lib.summarize(loop["history"])
    summary.update(status=status, step=loop["step"], workdir=str(workdir))
    summary.update(train_seconds_total=clock["last"], compile_seconds=compile_seconds)
    if is_chief and status == "finished":
        (workdir / "summary.json").write_text(json.dumps({**summary, "history": loop["history"]}, indent=2))
        log.info("Summary: %s", json.dumps(summary))
    return summary


def _stop_agreed(stop: _StopSignal, step: int, every: int) -> bool:
    """Whether to stop now. With several processes the flags are gathered every ``every`` steps, so
    all processes stop (and save, a collective) at the same step even if only one got the signal."""
    if jax.process_count() == 1:
        return stop.received is not None
    if step % every:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(stop.received is not None, np.int32))
    return bool(np.any(flags))


def _eval_splits(config: ml_collections.ConfigDict, pipe: Any) -> list[str]:
    splits = [s for s in ("validation", "test") if pipe.num_examples.get(s, 0) > 0]
    return splits if config.eval_test else [s for s in splits if s != "test"]


def _resident_data(config: ml_collections.ConfigDict, pipe: Any, total_steps: int) -> Any:
    """The device-resident data of ``config.data.device_resident`` runs (None otherwise)."""
    if not config.data.get("device_resident", False):
        return None
    if config.data.get("augment_on", "host") != "device":
        raise ValueError(
            "config.data.device_resident=True needs config.data.augment_on='device': the data stays on "
            "the devices, so augmentation runs there too."
        )
    if total_steps % pipe.steps_per_epoch:
        raise ValueError(
            f"config.max_train_steps={config.max_train_steps}: device-resident runs train whole epochs; use "
            f"a multiple of the {pipe.steps_per_epoch} steps per epoch (or 0)."
        )
    from spinal_jax.resident import ResidentData

    splits = _eval_splits(config, pipe)
    return ResidentData(pipe, splits, config.label_smoothing, _device_augment(config, pipe))


def _device_augment(config: ml_collections.ConfigDict, pipe: Any) -> Callable[..., Any] | None:
    if config.data.get("augment_on", "host") == "device":
        return pipe.device_augment
    return None


def final_params(workdir: str | Path) -> Any:
    """The parameters of ``workdir``'s latest checkpoint as host arrays (for comparisons and export)."""
    from orbax import checkpoint as ocp

    latest = Path(workdir).resolve() / "checkpoints"
    with ocp.CheckpointManager(latest) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint under {latest}.")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored.state["params"]


__all__ = [
    "create_model",
    "evaluate",
    "final_params",
    "per_device_batch_size",
    "prepare_workdir",
    "train_and_evaluate",
]
