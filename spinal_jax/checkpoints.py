"""Orbax checkpoints of a training run: latest K plus the best, exact resume, fallback, warm start.

Layout inside a workdir::

    checkpoints/<step>/{state,data,loop}   latest K (every N steps and every epoch end)
    best/<step>/{state,data,loop}          the checkpoint with the best validation accuracy

Each checkpoint is an ``ocp.args.Composite`` of the unreplicated train state (host numpy arrays, so
in a multi-process run the primary process writes them once), the data iterators' states (JSON, one
entry per process) and the loop state (JSON: epoch, history, plateau rule).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

log = logging.getLogger(__name__)


def state_to_host(state: Any) -> dict[str, Any]:
    """The pytree of a (unreplicated) TrainState as a nested dict of numpy arrays."""
    return jax.tree.map(np.asarray, serialization.to_state_dict(jax.device_get(state)))


def gather_json(obj: Any) -> list[Any]:
    """``obj`` from every process, in process order (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: data.size] = data
    everyone = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(everyone[i, : int(lengths.reshape(-1)[i])]).decode())
        for i in range(jax.process_count())
    ]


class Checkpoints:
    """The latest-K and best checkpoint managers of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
      use_async: write in a background thread (call :meth:`wait` before reading them back).
    """

    def __init__(self, workdir: str | Path, keep: int = 2, use_async: bool = True):
        workdir = Path(workdir).resolve()
        self.latest_dir = workdir / "checkpoints"
        self.best_dir = workdir / "best"

        def options(max_to_keep: int) -> ocp.CheckpointManagerOptions:
            return ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=use_async
            )

        self.latest = ocp.CheckpointManager(self.latest_dir, options=options(keep))
        self.best = ocp.CheckpointManager(self.best_dir, options=options(1))

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any,
        loop_state: dict[str, Any],
        best: bool = False,
        latest: bool = True,
    ) -> None:
        """Save at ``step`` (to the best manager too when ``best``; only there when not ``latest``);
        ``data_state`` is this process's."""
        host_state = state_to_host(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state),
            data=ocp.args.JsonSave({"per_process": gather_json(data_state)}),
            loop=ocp.args.JsonSave(loop_state),
        )
        managers = ([self.latest] if latest else []) + ([self.best] if best else [])
        for manager in managers:
            if step not in manager.all_steps():
                manager.save(step, args=args, force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, template: Any, which: str = "latest") -> tuple[Any, Any, dict[str, Any], int] | None:
        """Newest readable checkpoint of ``which`` ('latest' | 'best') restored onto ``template``.

        Returns ``(state, data_state_of_this_process, loop_state, step)`` or None when there is none.
        A checkpoint that cannot be read (truncated, corrupted, partly written) is skipped with a
        warning, and the one before it is tried.
        """
        manager = self.latest if which == "latest" else self.best
        host_template = state_to_host(template)
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(host_template),
                        data=ocp.args.JsonRestore(),
                        loop=ocp.args.JsonRestore(),
                    ),
                )
                state = serialization.from_state_dict(template, restored.state)
                _check_finite(state, step)
            except Exception as err:  # any failure to read means: use the previous checkpoint
                warnings.warn(
                    f"Checkpoint {manager.directory}/{step} could not be restored ({type(err).__name__}: "
                    f"{str(err)[:300]}); falling back to the previous checkpoint.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            per_process = restored.data["per_process"]
            if len(per_process) != jax.process_count():
                raise ValueError(
                    f"Checkpoint {manager.directory}/{step} was written by {len(per_process)} processes, "
                    f"this run has {jax.process_count()}: resume with the same number of processes."
                )
            return state, per_process[jax.process_index()], dict(restored.loop), step
        return None


def _check_finite(state: Any, step: int) -> None:
    for leaf in jax.tree.leaves(state.params):
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"non-finite parameters in the checkpoint of step {step}")


def load_params(path: str | Path, template: Any) -> Any:
    """``template`` with ``params`` and ``batch_stats`` from the checkpoint at ``path`` (warm start).

    ``path`` is a workdir (its best checkpoint, else its latest), a ``checkpoints``/``best`` folder
    (its newest step) or one step folder. Optimiser state, step and RNG stay the template's.
    """
    path = Path(path).resolve()
    candidates = [path / "best", path / "checkpoints", path]
    step_dir = None
    for folder in candidates:
        if (folder / "state").is_dir():
            step_dir = folder
            break
        steps = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "state").is_dir())
        if steps:
            step_dir = folder / str(steps[-1])
            break
    if step_dir is None:
        raise FileNotFoundError(
            f"config.init_from={str(path)!r} holds no checkpoint: give a workdir, its 'checkpoints' or "
            "'best' folder, or a step folder containing 'state'."
        )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(step_dir / "state")
    params = serialization.from_state_dict(template.params, restored["params"])
    batch_stats = serialization.from_state_dict(template.batch_stats, restored.get("batch_stats", {}))
    for name, new, old in (
        ("params", params, template.params),
        ("batch_stats", batch_stats, template.batch_stats),
    ):
        new_shapes = jax.tree.map(np.shape, new)
        old_shapes = jax.tree.map(np.shape, old)
        if new_shapes != old_shapes:
            raise ValueError(
                f"config.init_from={str(path)!r}: its {name} do not fit this model (shapes differ); "
                "warm-start from a run of the same model, head and class count."
            )
    log.info("Warm-started params and batch_stats from %s", step_dir)
    return template.replace(params=params, batch_stats=batch_stats)
