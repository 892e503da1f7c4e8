"""Orbax checkpoints of a training run: latest K plus the best, sealed with checksums, exact resume.

Layout inside a workdir::

    checkpoints/<step>/{state,data,loop,SHA256SUMS}   latest K (every N steps and every epoch end)
    best/<step>/{state,data,loop,SHA256SUMS}          the checkpoint with the best validation accuracy
    damaged/<kind>-<step>-<UTC time>/                 checkpoints that failed verification, moved aside
    checkpoints/retired/, best/retired/              steps past K, renamed here (atomic), then removed

Each checkpoint is an ``ocp.args.Composite`` of the unreplicated train state (host numpy arrays, so in a
multi-process run the primary process writes them once), the data iterators' states (JSON, one entry per
process) and the loop state (JSON: step, history, plateau rule, timing). Everything handed to a save is a
snapshot taken when :meth:`Checkpoints.save` is called, so an asynchronous write stores exactly the step
it is named after.

Once Orbax has finished a step, its files are hashed into ``SHA256SUMS`` inside the step folder (written
atomically). A restore verifies every file first: a step without a seal (the run stopped while writing
it) or with any mismatch is moved to ``damaged/`` with a warning naming it, and the previous step is
tried; the retrained step is then saved in its place. A step past the latest K is first renamed into
``retired/`` and removed from there, so a run killed while removing it never leaves a half-deleted step
under its number.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from spinal_jax.errors import UserError

log = logging.getLogger(__name__)
SEAL = "SHA256SUMS"
DAMAGED = "damaged"
RETIRED = "retired"


def state_to_host(state: Any) -> dict[str, Any]:
    """The pytree of a (unreplicated) TrainState as a nested dict of numpy arrays (copies). An empty
    ``ema`` (a run without one) is left out, so such checkpoints keep the layout they always had."""
    host = jax.tree.map(lambda x: np.array(x, copy=True), serialization.to_state_dict(jax.device_get(state)))
    if "ema" in host and not jax.tree.leaves(host["ema"]):
        del host["ema"]
    return host


def state_from_host(template: Any, host: dict[str, Any]) -> Any:
    """``template`` (a TrainState) with the arrays of ``host`` (:func:`state_to_host`'s layout)."""
    return serialization.from_state_dict(template, {"ema": {}, **host})


def gather_json(obj: Any) -> list[Any]:
    """``obj`` from every process, in process order (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return [copy.deepcopy(obj)]
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


# -- seals: checksums of every file of a finished step ---------------------------------------------------


def _file_digests(step_dir: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != SEAL):
        digests[path.relative_to(step_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def seal(step_dir: Path) -> None:
    """Write ``step_dir/SHA256SUMS`` (``sha256  relative/path`` lines) atomically."""
    lines = [f"{digest}  {name}\n" for name, digest in _file_digests(step_dir).items()]
    tmp = step_dir / f".{SEAL}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / SEAL)


UNSEALED = (
    "it has no checksum file (written before checksums existed, or the run stopped right after the save)"
)


def verify(step_dir: Path) -> str | None:
    """None when every file of ``step_dir`` matches its seal; otherwise what is wrong, in words
    (:data:`UNSEALED` when there is no seal)."""
    seal_path = step_dir / SEAL
    if not seal_path.is_file():
        return UNSEALED
    try:
        expected = dict(
            reversed(line.rstrip("\n").split("  ", 1)) for line in seal_path.read_text().splitlines()
        )
    except (ValueError, UnicodeDecodeError):
        return f"its {SEAL} is unreadable"
    actual = _file_digests(step_dir)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(name for name in expected if name in actual and actual[name] != expected[name])
    if missing or changed:
        return f"files differ from their checksums (changed: {changed[:3]}, missing: {missing[:3]})"
    return None


class Checkpoints:
    """The latest-K and best checkpoint managers of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
      use_async: write in a background thread (call :meth:`wait` before reading them back).
      read_only: for readers (evaluation, prediction) that may run beside the trainer: nothing on disk
        is changed (no temporary folders cleaned, damaged checkpoints skipped, not moved).
    """

    def __init__(self, workdir: str | Path, keep: int = 2, use_async: bool = True, read_only: bool = False):
        workdir = Path(workdir).resolve()
        self.workdir = workdir
        self.latest_dir = workdir / "checkpoints"
        self.best_dir = workdir / "best"
        self.use_async = use_async
        self.read_only = read_only
        self.latest = ocp.CheckpointManager(self.latest_dir, options=_options(keep, use_async, read_only))
        self.best = ocp.CheckpointManager(self.best_dir, options=_options(1, use_async, read_only))
        self._sealer: threading.Thread | None = None
        self._seal_error: BaseException | None = None

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
        ``data_state`` is this process's. All three are copied before this returns."""
        self.wait()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state_to_host(state)),
            data=ocp.args.JsonSave({"per_process": gather_json(data_state)}),
            loop=ocp.args.JsonSave(json.loads(json.dumps(loop_state))),
        )
        managers = ([self.latest] if latest else []) + ([self.best] if best else [])
        written = []
        for manager in managers:
            if step not in manager.all_steps():
                manager.save(step, args=args, force=True)
                written.append(manager)
        if not written:
            return
        if self.use_async:
            self._sealer = threading.Thread(target=self._seal_when_done, args=(written, step), daemon=True)
            self._sealer.start()
        else:
            self._seal_when_done(written, step)

    def _seal_when_done(self, managers: list[ocp.CheckpointManager], step: int) -> None:
        try:
            for manager in managers:
                manager.wait_until_finished()
                if jax.process_index() == 0:
                    seal(Path(manager.directory) / str(step))
                    shutil.rmtree(Path(manager.directory) / RETIRED, ignore_errors=True)
        except BaseException as err:  # re-raised in the main thread by wait()
            self._seal_error = err

    def wait(self) -> None:
        """Block until every save has been written and sealed."""
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        if self._seal_error is not None:
            err, self._seal_error = self._seal_error, None
            raise err

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(
        self, template: Any, which: str = "latest", max_step: int | None = None
    ) -> tuple[Any, Any, dict[str, Any], int] | None:
        """Newest usable checkpoint of ``which`` ('latest' | 'best') restored onto ``template`` (of those
        at most ``max_step``, when given).

        Returns ``(state, data_state_of_this_process, loop_state, step)`` or None when there is none.
        A checkpoint whose files differ from its seal, or that cannot be read, is moved to ``damaged/``
        (skipped when ``read_only``) with a warning, and the one before it is tried. One without a seal
        (complete, as Orbax renames a step into place only once it is written) is restored unverified,
        with a warning. A verified checkpoint that does not fit ``template`` is a UserError.
        """
        manager = self.latest if which == "latest" else self.best
        host_template = state_to_host(template)
        for step in sorted(manager.all_steps(), reverse=True):
            if max_step is not None and step > max_step:
                continue
            step_dir = Path(manager.directory) / str(step)
            problem = verify(step_dir)
            if problem is not None and problem != UNSEALED:
                self._set_aside(manager, step, problem)
                continue
            if problem == UNSEALED:
                warnings.warn(f"Checkpoint {step_dir} is restored unverified: {UNSEALED}.", RuntimeWarning, 2)
            try:
                restored = manager.restore(step, args=_restore_args(host_template))
                _check_shapes(restored.state, host_template)
            except Exception as err:  # unreadable: damage when unverified, else another model's checkpoint
                if problem is None:
                    raise UserError(_misfit(step_dir, err)) from err
                self._set_aside(manager, step, f"{type(err).__name__}: {err}")
                continue
            state = state_from_host(template, restored.state)
            if not _all_finite(state):
                self._set_aside(manager, step, "non-finite parameters")
                continue
            if problem == UNSEALED and not self.read_only and jax.process_index() == 0:
                seal(step_dir)  # it restored, complete and finite: from now on it is verified
            return state, self._data_state(restored, step_dir), dict(restored.loop), step
        return None

    @staticmethod
    def _data_state(restored: Any, step_dir: Path) -> Any:
        per_process = restored.data["per_process"]
        if len(per_process) != jax.process_count():
            raise UserError(
                f"Checkpoint {step_dir} was written by {len(per_process)} processes, this run has "
                f"{jax.process_count()}: resume with the same number of processes."
            )
        return per_process[jax.process_index()]

    def _set_aside(self, manager: ocp.CheckpointManager, step: int, problem: str) -> None:
        """Warn, move the step folder to ``damaged/`` (process 0) and reload the manager; with
        ``read_only`` only warn."""
        kind = Path(manager.directory).name
        if self.read_only:
            warnings.warn(
                f"Checkpoint {manager.directory}/{step} is damaged ({problem[:300]}); skipped.",
                RuntimeWarning,
                3,
            )
            return
        target = self.workdir / DAMAGED / f"{kind}-{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        warnings.warn(
            f"Checkpoint {manager.directory}/{step} is damaged ({problem[:300]}); moved to {target} and "
            "falling back to the previous checkpoint.",
            RuntimeWarning,
            stacklevel=3,
        )
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(manager.directory) / str(step)), str(target))
        _barrier(f"set_aside_{kind}_{step}")
        manager.reload()


def _check_shapes(restored: Any, host_template: Any) -> None:
    """A ValueError naming the first array whose shape differs from the template's."""
    flat = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(host_template)[0]:
        if path in flat and np.shape(flat[path]) != np.shape(leaf):
            name = jax.tree_util.keystr(path)
            raise ValueError(f"{name} has shape {np.shape(flat[path])}, the model's is {np.shape(leaf)}")


def _misfit(step_dir: Path, err: Exception) -> str:
    return (
        f"Checkpoint {step_dir} is intact but does not fit this run's model and optimiser "
        f"({type(err).__name__}: {str(err)[:300]}): it was written by another model, head, optimiser or "
        "spinal_jax version. Use another --workdir, or --config.overwrite=True to start this one again."
    )


def _options(max_to_keep: int, use_async: bool, read_only: bool = False) -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=use_async,
        cleanup_tmp_directories=not read_only,
        todelete_subdir=RETIRED,
    )


def _restore_args(host_template: Any) -> ocp.args.Composite:
    return ocp.args.Composite(
        state=ocp.args.StandardRestore(host_template),
        data=ocp.args.JsonRestore(),
        loop=ocp.args.JsonRestore(),
    )


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_finite(state: Any) -> bool:
    return all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))


def _find_step_dir(path: Path) -> Path | None:
    """A step folder under ``path`` (a workdir, a ``checkpoints``/``best`` folder or a step folder)."""
    for folder in (path / "best", path / "checkpoints", path):
        if (folder / "state").is_dir():
            return folder
        found = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "state").is_dir())
        if found:
            return folder / str(found[-1])
    return None


def load_params(path: str | Path, template: Any) -> Any:
    """``template`` with ``params`` and ``batch_stats`` from the checkpoint at ``path`` (warm start).

    ``path`` is a workdir (its best checkpoint, else its latest), a ``checkpoints``/``best`` folder
    (its newest step) or one step folder. Optimiser state, step and RNG stay the template's.
    """
    path = Path(path).resolve()
    step_dir = _find_step_dir(path)
    if step_dir is None:
        raise UserError(
            f"config.init_from={str(path)!r} holds no checkpoint: give a workdir, its 'checkpoints' or "
            "'best' folder, or a step folder containing 'state'."
        )
    problem = verify(step_dir) if (step_dir / SEAL).exists() else None
    if problem is not None:
        raise UserError(f"config.init_from: checkpoint {step_dir} is damaged ({problem}); use another step.")
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(step_dir / "state")
    params = serialization.from_state_dict(template.params, restored["params"])
    batch_stats = serialization.from_state_dict(template.batch_stats, restored.get("batch_stats", {}))
    for name, new, old in (
        ("params", params, template.params),
        ("batch_stats", batch_stats, template.batch_stats),
    ):
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, old):
            raise UserError(
                f"config.init_from={str(path)!r}: its {name} do not fit this model (shapes differ); "
                "warm-start from a run of the same model, head and class count."
            )
    log.info("Warm-started params and batch_stats from %s", step_dir)
    return template.replace(params=params, batch_stats=batch_stats)


def _latest_state(workdir: str | Path) -> Any:
    """The train state of ``workdir``'s latest checkpoint as a nested dict of host arrays."""
    latest = Path(workdir).resolve() / "checkpoints"
    with ocp.CheckpointManager(latest) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint under {latest}.")
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state


def final_state(workdir: str | Path) -> dict[str, np.ndarray]:
    """Every array of ``workdir``'s latest checkpoint's train state, by path (``"['params'][...]"``)."""
    leaves = jax.tree_util.tree_flatten_with_path(_latest_state(workdir))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def final_params(workdir: str | Path) -> Any:
    """The parameters of ``workdir``'s latest checkpoint as host arrays (for comparisons and export)."""
    return _latest_state(workdir)["params"]
