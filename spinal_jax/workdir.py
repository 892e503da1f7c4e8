"""A run's directory: checked before anything is written, its config stored, one trainer at a time.

``prepare_workdir`` refuses a path that is a file, not writable, or that holds a run of another config
(unless ``config.overwrite``), and then stores ``config.json``. A run of ``config.num_seeds`` S > 1
replicas keeps each in ``<workdir>/seed<k>`` (``k = config.seed + r``), a workdir of its own holding the
config of a run of that seed alone, so ``evaluate``, ``predict`` and a later single-seed run read it as
they read any run. :class:`WorkdirLock` holds an exclusive
``flock`` on ``<workdir>/.lock`` for the whole run; the lock file names the holder (host, pid), and a
lock left by a process that died is taken over with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import jax
import ml_collections

from spinal_jax import config as config_lib
from spinal_jax.errors import UserError

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
RUN_OUTPUTS = ("checkpoints", "best", "tb", "metrics.jsonl", "summary.json", "learning_curves.png")


def ensure_writable(workdir: Path) -> None:
    """Create ``workdir``; a UserError when it is a file or cannot be written."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not a directory: give a directory path.")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"--workdir {workdir} cannot be created ({err.strerror}): give a writable path."
        ) from err
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir} is not writable: give a writable directory.")


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [("", json.loads(config.to_json_best_effort()))]
    while stack:
        prefix, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{prefix}{key}.", sub) for key, sub in value.items())
        else:
            out[prefix[:-1]] = value
    return out


def config_differences(stored: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> list[str]:
    """``'field: old -> new'`` for every field that differs, except :data:`config.RESUMABLE_FIELDS`."""
    old, new = _flat(stored), _flat(current)
    keys = sorted(k for k in set(old) | set(new) if k not in config_lib.RESUMABLE_FIELDS)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def replica_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """The config of a run of replica ``index`` alone: ``seed + index``, ``data.seed + index``, one seed."""
    single = ml_collections.ConfigDict(config.to_dict())
    single.seed = config.seed + index
    single.data.seed = config.data.seed + index
    single.num_seeds = 1
    return single


def replica_dirs(config: ml_collections.ConfigDict, workdir: Path) -> list[Path]:
    """Where each replica's checkpoints and metrics go: ``[workdir]`` for one seed, else
    ``workdir/seed<k>`` for ``k`` in ``seed .. seed + num_seeds - 1``."""
    if config.num_seeds == 1:
        return [workdir]
    return [workdir / f"seed{config.seed + r}" for r in range(config.num_seeds)]


def prepare_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Store the config as ``config.json``; refuse a workdir holding a run of a different config.

    With ``config.overwrite`` the old run's checkpoints and logs are removed instead (moved-aside
    ``damaged/`` checkpoints stay). Process 0 writes; call it after :func:`ensure_writable`. With
    several seeds each replica directory is prepared the same way with :func:`replica_config`.
    """
    _prepare_one(config, workdir)
    if config.num_seeds > 1:
        for index, path in enumerate(replica_dirs(config, workdir)):
            if jax.process_index() == 0:
                ensure_writable(path)
            _prepare_one(replica_config(config, index), path)


def _prepare_one(config: ml_collections.ConfigDict, workdir: Path) -> None:
    path = workdir / "config.json"
    if path.exists():
        try:
            stored = ml_collections.ConfigDict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(
                f"{path} is not valid JSON ({err}): restore it, or use another --workdir."
            ) from err
        differ = config_differences(stored, config)
        if differ and not config.overwrite:
            raise UserError(
                f"Workdir {workdir} holds a run of a different config ({', '.join(differ[:5])}). Use another "
                "--workdir, or pass --config.overwrite=True to delete that run and start again."
            )
        if differ and jax.process_index() == 0:
            log.warning("config.overwrite=True: deleting the previous run in %s", workdir)
            for name in RUN_OUTPUTS:
                target = workdir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if jax.process_index() == 0:
        path.write_text(config.to_json_best_effort(indent=2))


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir`` (its ``config.json``) on top of today's defaults, so a run
    stored before a field existed gets that field's default; a UserError when there is no run there, or
    when it holds several seed replicas (each ``seed<k>`` folder is a run)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"{workdir} holds no config.json: give the --workdir of a spinal_jax training run.")
    try:
        stored = ml_collections.ConfigDict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): restore it from the run's copy.") from err
    config = config_lib.base_config()
    config.data = config_lib.data_config(stored.data.name)
    config.update(stored)
    if config.num_seeds > 1:
        names = ", ".join(p.name for p in replica_dirs(config, Path(workdir)))
        raise UserError(
            f"{workdir} holds {config.num_seeds} models trained together ({names}): give the --workdir of "
            f"one of them, e.g. {Path(workdir) / f'seed{config.seed}'}."
        )
    return config


class WorkdirLock:
    """An exclusive lock on ``workdir`` for this process (a no-op when ``enabled`` is False).

    Raises UserError naming the holder when another live process holds it.
    """

    def __init__(self, workdir: Path, enabled: bool = True):
        self.path = workdir / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"Workdir {self.path.parent} is in use by {holder}: one trainer per workdir. Wait for it to "
                "finish (or stop it), or use another --workdir."
            ) from None
        previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
        me = f"host {socket.gethostname()}, pid {os.getpid()}"
        if previous and previous != me:
            log.warning(
                "Took over the lock of %s left by %s, which is no longer running.", self.path.parent, previous
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
