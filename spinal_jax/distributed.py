"""Start JAX's multi-process runtime from flags or from the cluster environment JAX detects."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# Variables whose presence (with more than one process) means a multi-process launch JAX can auto-detect.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """``jax.distributed.initialize`` when asked by flags, or when a cluster launcher is detected.

    Args:
      coordinator_address: ``host:port`` of process 0; with ``num_processes`` and ``process_id``.
      num_processes: total processes (0: not given).
      process_id: this process's index (-1: not given).

    CPU collectives use gloo, so multi-process runs work on CPU-only machines too.
    """
    given = [bool(coordinator_address), num_processes > 0, process_id >= 0]
    if any(given) and not all(given):
        raise ValueError(
            "Multi-process flags come together: give --coordinator_address, --num_processes and "
            "--process_id, or none of them (then a SLURM/Open MPI launch is auto-detected)."
        )
    if all(given):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    elif any(int(os.environ.get(v, "1")) > 1 for v in _CLUSTER_SIZE_VARS):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    else:
        return
    log.info(
        "Process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
