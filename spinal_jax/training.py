"""The training loop: ``train_and_evaluate(config, workdir)``, as run by ``python train.py``.

One process per host feeds its own shard of every global batch to its local devices; the pmapped step
(:mod:`spinal_jax.steps`) averages gradients over all devices of all processes. After every epoch the
validation and test splits are evaluated over every example, the plateau rule (if enabled) reacts to
the monitored accuracy, and a checkpoint is written (:mod:`spinal_jax.checkpoints`). A restarted run
resumes from the workdir's latest verified checkpoint.

With ``config.num_seeds`` S > 1 the run trains S independently seeded models (:class:`Replica`) in
one program: the train state is stacked along a seed axis (:func:`spinal_jax.steps.stack_replicas`),
and each replica keeps the bookkeeping of a run of its own, in ``<workdir>/seed<k>``: loop state,
checkpoints, metrics, plateau rule, curves and summary.

The loop's state is explicit: one :class:`LoopState` per replica (checkpointed with every save),
:class:`Run` (set up once) and :class:`Progress` (host bookkeeping since this process started). Every
function below takes them as arguments; none keeps state of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import jax_utils

from spinal_jax import build, checkpoints, finetune, optim, sources, steps
from spinal_jax import config as config_lib
from spinal_jax import metrics as metrics_lib
from spinal_jax import workdir as workdir_lib

log = logging.getLogger(__name__)
PLOT_EVERY_SECONDS = 30.0  # learning curves are redrawn at most this often (and at the end)


# ---------------------------------------------------------------------------------------------------------
# The loop's state
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoopState:
    """What the loop carries from step to step and across resumes; stored as JSON in every checkpoint.

    ``epoch_sums`` are the sums (loss, accuracy, steps) of this epoch's logged train steps;
    ``train_seconds`` is the training wall time up to ``step`` (evaluation and bookkeeping included),
    ``epoch_start_seconds`` its value when the current epoch began.
    """

    step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_validation: float | None = None
    epoch_sums: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0])
    plateau: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0
    epoch_start_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A deep copy as plain JSON types (a snapshot: later changes to ``self`` do not reach it)."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        loop = cls(**{k: copy.deepcopy(v) for k, v in stored.items() if k in names})
        if "train_seconds" not in stored and loop.history:  # written before timing was checkpointed
            loop.train_seconds = loop.epoch_start_seconds = float(loop.history[-1]["train_seconds_total"])
        return loop


@dataclasses.dataclass
class Replica:
    """One of the run's ``config.num_seeds`` models, in a directory of its own (the workdir itself when
    the run has one seed): its checkpoints, metrics writer and plateau rule."""

    seed: int
    workdir: Path
    ckpt: checkpoints.Checkpoints
    writer: metrics_lib.MetricWriter
    plateau: optim.PlateauRule


@dataclasses.dataclass
class Run:
    """What one call of :func:`train_and_evaluate` sets up once."""

    config: ml_collections.ConfigDict
    workdir: Path
    pipe: Any
    source: Any  # a spinal_jax.sources data source
    replicas: list[Replica]
    total_steps: int
    steps_per_epoch: int
    splits: list[str]
    num_classes: int
    is_chief: bool
    compile_seconds: float | None = None
    bar: Any = None


@dataclasses.dataclass
class Progress:
    """Host bookkeeping of this process (not checkpointed): metrics not yet pulled from the devices,
    the last saved step, each replica's best epoch held for the next save, and the clocks."""

    started: float
    carried_seconds: float
    rate_since: tuple[float, int]
    held_best: list[tuple[Any, ...] | None]
    last_saved: int | None = None
    pending: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)
    plotted: tuple[float, int] = (0.0, 0)
    profiling_since: int | None = None  # the step a running profiler trace started at

    def train_seconds(self) -> float:
        return self.carried_seconds + time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------


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
      'interrupted' (a SIGTERM / Ctrl-C saved a checkpoint; rerun the same command to resume). With
      several seeds: ``status``, ``step`` and timing, and ``replicas``, each replica's summary.

    Bad input (config, data, batch, workdir) raises :class:`spinal_jax.errors.UserError` before
    anything is written to ``workdir``.
    """
    config_lib.validate_config(config)
    workdir = Path(workdir).resolve()
    build.per_device_batch_size(config.data.batch_size, jax.local_device_count(), jax.process_count())
    is_chief = jax.process_index() == 0
    if is_chief:
        workdir_lib.ensure_writable(workdir)
    if pipeline is None:
        from spinal_jax.data import create_input_pipeline

        pipeline = create_input_pipeline(config.data)
    num_classes = config.model.num_classes or pipeline.num_classes
    if model is None:
        model = build.build_model(config, num_classes)
    with workdir_lib.WorkdirLock(workdir, enabled=is_chief):
        workdir_lib.prepare_workdir(config, workdir)
        _barrier("prepare_workdir")
        run, loops, progress, p_state = setup(config, workdir, pipeline, model, num_classes)
        try:
            status = train_loop(run, loops, progress, p_state)
        finally:
            if progress.profiling_since is not None:
                jax.profiler.stop_trace()
            run.bar.close()
            for replica in run.replicas:
                replica.ckpt.close()
                replica.writer.close()
    return write_summary(run, loops, progress, status)


def setup(
    config: ml_collections.ConfigDict, workdir: Path, pipe: Any, model: Any, num_classes: int
) -> tuple[Run, list[LoopState], Progress, Any]:
    """The run's parts, each replica's loop state (restored or fresh) and the replicated train state."""
    spe = pipe.steps_per_epoch
    total_steps = config.num_epochs * spe
    if config.max_train_steps:
        total_steps = min(total_steps, config.max_train_steps)
    options = build.step_options(config, pipe, num_classes)
    source = sources.create_source(config, pipe, total_steps, options)
    states, base_lr = build.build_replica_states(config, model, pipe.image_shape, spe, pipe.global_batch_size)
    replicas = []
    for index, path in enumerate(workdir_lib.replica_dirs(config, workdir)):
        seed = config.seed + index
        plateau = optim.PlateauRule(
            base_lr, config.plateau.power, seed, mode=config.plateau.mode, factor=config.plateau.factor
        )
        ckpt = checkpoints.Checkpoints(path, keep=config.keep_checkpoints, use_async=config.async_checkpoints)
        replicas.append(Replica(seed, path, ckpt, None, plateau))
    loops, states, restored = restore_or_initialize(config, replicas, source, model, states)
    is_chief = jax.process_index() == 0
    for replica, loop in zip(replicas, loops, strict=True):
        replica.writer = metrics_lib.MetricWriter(
            replica.workdir, enabled=is_chief, tensorboard=config.tensorboard, resume_step=loop.step
        )
    state = states[0] if config.num_seeds == 1 else steps.stack_replicas(states)
    p_state = steps.on_devices(jax_utils.replicate(state))  # as pmap outputs: no recompilation later
    compile_seconds = source.compile(p_state)
    if compile_seconds is not None:
        log.info("Compiled the epoch and the evaluation in %.1f s", compile_seconds)
    from tqdm.auto import tqdm

    step = loops[0].step
    bar = tqdm(total=total_steps, initial=step, disable=not is_chief, unit="step", dynamic_ncols=True)
    splits = sources.eval_splits(config, pipe)
    run = Run(config, workdir, pipe, source, replicas, total_steps, spe, splits, num_classes, is_chief,
              compile_seconds, bar)  # fmt: skip
    now = time.perf_counter()
    progress = Progress(
        started=now,
        carried_seconds=loops[0].train_seconds,
        rate_since=(now, step),
        held_best=[None] * len(replicas),
        last_saved=step if restored else None,
        plotted=(now, len(loops[0].history)),  # the first plot comes after PLOT_EVERY_SECONDS
    )
    return run, loops, progress, p_state


def restore_or_initialize(
    config: ml_collections.ConfigDict,
    replicas: list[Replica],
    source: Any,
    model: Any,
    states: list[steps.TrainState],
) -> tuple[list[LoopState], list[steps.TrainState], bool]:
    """Each replica's newest verified checkpoint (loop, state, data position, plateau rule), all at one
    step, else a fresh start from ``states``, warm-started by ``config.init_from`` or
    ``config.pretrained``. The bool says whether checkpoints were restored.

    Replicas are saved one after another, so a run stopped between two saves has replicas at different
    steps: all resume from the oldest of them (the steps trained again are the same).
    """
    found = [replica.ckpt.restore(state) for replica, state in zip(replicas, states, strict=True)]
    common = min((x[3] if x is not None else 0) for x in found)
    if any(x is not None and x[3] != common for x in found):
        found = [
            r.ckpt.restore(state, max_step=common) if common else None
            for r, state in zip(replicas, states, strict=True)
        ]
    if any(x is None for x in found):
        fresh = [_warm_start(config, model, state) for state in states]
        return [LoopState() for _ in replicas], fresh, False
    loops = []
    for index, (replica, (_, data_state, loop_json, step)) in enumerate(zip(replicas, found, strict=True)):
        source.set_state(data_state, index)
        loops.append(LoopState.from_json(loop_json))
        replica.plateau.load_state_dict(loops[-1].plateau)
        epoch = step // source.pipe.steps_per_epoch
        log.info("Resumed from %s/%d (epoch %d)", replica.ckpt.latest_dir, step, epoch)
    return loops, [x[0] for x in found], True


def _warm_start(config: ml_collections.ConfigDict, model: Any, state: steps.TrainState) -> steps.TrainState:
    if config.init_from:
        return checkpoints.load_params(config.init_from, state)
    if config.pretrained:
        return finetune.load_pretrained_state(config, model, state)
    return state


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train_loop(run: Run, loops: list[LoopState], progress: Progress, p_state: Any) -> str:
    """Train until ``run.total_steps`` or a stop signal; returns 'finished' or 'interrupted'."""
    chunk = run.source.steps_per_call
    stop_every = chunk if chunk > 1 else run.config.log_every_steps
    profile = config_lib.profile_window(run.config.profile_steps)
    step = loops[0].step
    with _StopSignal() as stop:
        while step < run.total_steps:
            profile_switch(run, progress, profile, step, p_state)
            p_state, step_metrics = run.source.train(p_state, step)
            progress.pending.append(step_metrics)
            step += chunk
            for loop in loops:
                loop.step = step
            run.bar.update(chunk)
            if step % run.config.log_every_steps == 0:
                flush_metrics(run, loops, progress)
            if step % run.steps_per_epoch == 0:
                p_state = end_epoch(run, loops, progress, p_state)
            elif run.config.checkpoint_every_steps and step % run.config.checkpoint_every_steps == 0:
                save(run, loops, progress, p_state)
            if _stop_agreed(stop, step, stop_every):
                if step != progress.last_saved:
                    save(run, loops, progress, p_state)
                log.warning(
                    "Signal %s: saved step %d to %s; run the same command again to resume.",
                    stop.received,
                    step,
                    run.workdir,
                )
                return "interrupted"
    profile_switch(run, progress, profile, step, p_state)
    if step != progress.last_saved:
        save(run, loops, progress, p_state)  # a run cut short by max_train_steps
    if run.is_chief and progress.plotted[1] != len(loops[0].history):
        plot(run, loops, progress)  # the epochs since the last plot
    return "finished"


def profile_switch(
    run: Run, progress: Progress, window: tuple[int, int] | None, step: int, p_state: Any
) -> None:
    """Start a ``jax.profiler`` trace into ``<workdir>/profile`` when ``step`` enters the window
    ``[start, stop)`` and stop it (once the devices are done) when it leaves; process 0 only."""
    if window is None or not run.is_chief:
        return
    start, stop = window
    if start <= step < stop and progress.profiling_since is None:
        jax.profiler.start_trace(str(run.workdir / "profile"))
        progress.profiling_since = step
        log.info("Profiling from step %d to %d into %s", step, stop, run.workdir / "profile")
    elif step >= stop and progress.profiling_since is not None:
        jax.block_until_ready(p_state)
        jax.profiler.stop_trace()
        progress.profiling_since = None


def flush_metrics(run: Run, loops: list[LoopState], progress: Progress) -> None:
    """Pull the pending step metrics to the host, stop on a non-finite loss, log each replica's means."""
    if not progress.pending:
        return
    host = jax.device_get(progress.pending)
    progress.pending = []
    step = loops[0].step
    now = time.perf_counter()
    since, since_step = progress.rate_since
    rate = (step - since_step) * run.pipe.global_batch_size / max(now - since, 1e-9)
    progress.rate_since = (now, step)
    means = []
    for index, (replica, loop) in enumerate(zip(run.replicas, loops, strict=True)):
        # Device 0's values, one per step: a step's metrics are scalars, a scanned epoch's (steps,).
        mine = [steps.replica({k: v[0] for k, v in m.items()}, index, len(loops)) for m in host]
        series = {k: np.concatenate([np.atleast_1d(m[k]) for m in mine]) for k in mine[0]}
        n = len(series["loss"])
        _stop_on_non_finite(run, replica, progress, series, first_step=step - n + 1)
        loss = float(np.mean(series["loss"]))
        acc = float(np.mean(series["accuracy"]))
        sums = loop.epoch_sums
        loop.epoch_sums = [sums[0] + loss * n, sums[1] + acc * n, sums[2] + n]
        metrics = {
            "loss": loss,
            "accuracy": acc,
            "learning_rate": float(series["learning_rate"][-1]),
            "images_per_second": rate,
        }
        replica.writer.write(step, "train", metrics)
        means.append((loss, acc))
    loss, acc = np.mean(means, axis=0)
    epoch = (step - 1) // run.steps_per_epoch + 1
    run.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", acc=f"{acc:.4f}", img_s=f"{rate:.0f}")


def _stop_on_non_finite(
    run: Run, replica: Replica, progress: Progress, series: dict[str, np.ndarray], first_step: int
) -> None:
    bad = np.flatnonzero(~(np.isfinite(series["loss"]) & np.isfinite(series["grad_norm"])))
    if not bad.size:
        return
    i = int(bad[0])
    for each in run.replicas:
        each.ckpt.wait()
    if progress.last_saved is None:
        kept = "No checkpoint was written yet."
    else:
        kept = f"The last good checkpoint (step {progress.last_saved}) is kept in {replica.ckpt.latest_dir}."
    which = f" of the replica with seed {replica.seed}" if len(run.replicas) > 1 else ""
    step = first_step + i
    raise FloatingPointError(
        f"The training loss{which} became {float(series['loss'][i])} (gradient norm "
        f"{float(series['grad_norm'][i])}) at step {step} (epoch {(step - 1) // run.steps_per_epoch + 1}). "
        f"Stopped. {kept} "
        "Lower --config.optim.learning_rate (or add warm-up), or check the data for NaN/inf."
    )


def end_epoch(run: Run, loops: list[LoopState], progress: Progress, p_state: Any) -> Any:
    """Evaluate every replica, record its epoch, apply its plateau rule, save (or hold a best epoch);
    returns the state (with new learning rates where a plateau rule changed them)."""
    flush_metrics(run, loops, progress)
    results = run.source.evaluate(p_state)
    ema_results = run.source.evaluate(steps.ema_view(p_state)) if run.config.ema.decay > 0 else None
    rates = np.asarray(optim.current_learning_rate(p_state.opt_state))[0]
    best = []
    for index, (replica, loop) in enumerate(zip(run.replicas, loops, strict=True)):
        lr = float(steps.replica(rates, index, len(loops)))
        ema = None if ema_results is None else ema_results[index]
        record = epoch_record(run, loop, progress, lr, results[index], ema)
        loop.history.append(record)
        loop.epoch_sums = [0.0, 0.0, 0]
        loop.epoch_start_seconds = record["train_seconds_total"]
        replica.writer.write(loop.step, "epoch", record)
        if run.is_chief:
            log.info("epoch %d%s: %s", record["epoch"], _named(run, replica), json.dumps(record))
        if run.config.plateau.enabled:
            p_state = apply_plateau_rule(run, index, record, p_state)
        val = record.get("validation_accuracy")
        best.append(val is not None and (loop.best_validation is None or val > loop.best_validation))
        if best[-1]:
            loop.best_validation = val
    if run.is_chief and (
        loops[0].step >= run.total_steps or time.perf_counter() - progress.plotted[0] >= PLOT_EVERY_SECONDS
    ):
        plot(run, loops, progress)
    if (
        loops[0].history[-1]["epoch"] % run.config.checkpoint_every_epochs == 0
        or loops[0].step >= run.total_steps
    ):
        save(run, loops, progress, p_state, best=best)
    else:
        for index in np.flatnonzero(best):
            hold_best(run, int(index), loops[index], progress, p_state)
    progress.rate_since = (time.perf_counter(), loops[0].step)  # img/s counts training time only
    return p_state


def _named(run: Run, replica: Replica) -> str:
    return f" (seed {replica.seed})" if len(run.replicas) > 1 else ""


def epoch_record(
    run: Run,
    loop: LoopState,
    progress: Progress,
    learning_rate: float,
    results: dict[str, Any],
    ema_results: dict[str, Any] | None,
) -> dict[str, Any]:
    """The epoch's line of ``history``: train means, learning rate, each split's results (and those of
    the moving average, when the run keeps one), timing."""
    sums = loop.epoch_sums
    record: dict[str, Any] = {"epoch": loop.step // run.steps_per_epoch, "step": loop.step}
    if sums[2]:
        record.update(train_loss=sums[0] / sums[2], train_accuracy=sums[1] / sums[2])
    record["learning_rate"] = learning_rate
    _add_results(record, "", results, run)
    if ema_results is not None:  # the moving average, evaluated beside the trained weights
        _add_results(record, "ema_", ema_results, run)
    total = progress.train_seconds()
    record.update(epoch_seconds=total - loop.epoch_start_seconds, train_seconds_total=total)
    if run.compile_seconds is not None:
        record["compile_seconds"] = run.compile_seconds
    return record


def _add_results(record: dict[str, Any], prefix: str, results: dict[str, Any], run: Run) -> None:
    for split in run.splits:
        record[f"{prefix}{split}_accuracy"] = results[split]["accuracy"]
        record[f"{prefix}{split}_loss"] = results[split]["loss"]
        if run.num_classes >= 100:
            record[f"{prefix}{split}_top5"] = results[split]["top5"]


def apply_plateau_rule(run: Run, index: int, record: dict[str, Any], p_state: Any) -> Any:
    """The state with the learning rate replica ``index``'s plateau rule picks after this epoch
    (unchanged if none)."""
    monitored = record.get(f"{run.config.plateau.monitor}_accuracy")
    if monitored is None:
        raise ValueError(f"config.plateau.monitor={run.config.plateau.monitor!r} but that split is empty.")
    new_lr = run.replicas[index].plateau.update(monitored, record["learning_rate"])
    if new_lr is None:
        return p_state
    which = index if len(run.replicas) > 1 else None
    return steps.on_devices(
        p_state.replace(opt_state=optim.set_learning_rate(p_state.opt_state, new_lr, which))
    )


# ---------------------------------------------------------------------------------------------------------
# Checkpoints, plots and the summary
# ---------------------------------------------------------------------------------------------------------


def save(
    run: Run, loops: list[LoopState], progress: Progress, p_state: Any, best: list[bool] | None = None
) -> None:
    """Checkpoint every replica at the current step (``best[r]``: also as replica ``r``'s best); a
    snapshot of everything, the writes themselves may be asynchronous."""
    flush_metrics(run, loops, progress)
    best = best or [False] * len(loops)
    state = jax_utils.unreplicate(p_state)
    for index, (replica, loop) in enumerate(zip(run.replicas, loops, strict=True)):
        loop.plateau = replica.plateau.state_dict()
        loop.train_seconds = progress.train_seconds()
        held = progress.held_best[index]
        if held is not None and not best[index]:  # a better epoch since the last save goes to best/
            replica.ckpt.save(*held, best=True, latest=False)
        progress.held_best[index] = None
        mine = steps.replica(state, index, len(loops))
        replica.ckpt.save(loop.step, mine, run.source.get_state(index), loop.to_json(), best=best[index])
    progress.last_saved = loops[0].step


def hold_best(run: Run, index: int, loop: LoopState, progress: Progress, p_state: Any) -> None:
    """Keep replica ``index``'s best epoch, not due for a checkpoint, on the host; the next save writes it."""
    replica = run.replicas[index]
    loop.plateau = replica.plateau.state_dict()
    loop.train_seconds = progress.train_seconds()
    host_state = jax.device_get(steps.replica(jax_utils.unreplicate(p_state), index, len(run.replicas)))
    progress.held_best[index] = (loop.step, host_state, run.source.get_state(index), loop.to_json())


def plot(run: Run, loops: list[LoopState], progress: Progress) -> None:
    for replica, loop in zip(run.replicas, loops, strict=True):
        metrics_lib.plot_learning_curves(
            loop.history,
            replica.workdir / "learning_curves.png",
            run.config.model.name + _named(run, replica),
        )
    progress.plotted = (time.perf_counter(), len(loops[0].history))


def write_summary(run: Run, loops: list[LoopState], progress: Progress, status: str) -> dict[str, Any]:
    """The run's summary; written to ``summary.json`` (process 0) when the run finished. With several
    seeds each replica's goes to its directory, and the run's (without histories) to the workdir."""
    timing = dict(train_seconds_total=progress.train_seconds(), compile_seconds=run.compile_seconds)
    summaries = []
    for replica, loop in zip(run.replicas, loops, strict=True):
        summary = metrics_lib.summarize(loop.history)
        summary.update(status=status, step=loop.step, workdir=str(replica.workdir), **timing)
        if len(run.replicas) > 1:
            summary["seed"] = replica.seed
        if run.is_chief and status == "finished":
            text = json.dumps({**summary, "history": loop.history}, indent=2)
            (replica.workdir / "summary.json").write_text(text)
            log.info("Summary%s: %s", _named(run, replica), json.dumps(summary))
        summaries.append(summary)
    if len(run.replicas) == 1:
        return summaries[0]
    summary = dict(status=status, step=loops[0].step, workdir=str(run.workdir), **timing, replicas=summaries)
    if run.is_chief and status == "finished":
        (run.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------------------------------------------------
# Signals and processes
# ---------------------------------------------------------------------------------------------------------


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


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = ["LoopState", "Progress", "Replica", "Run", "train_and_evaluate"]
