"""Train a SpinalNet model: ``python train.py --config configs/<name>.py[:ARG] --workdir DIR``.

Override any field with ``--config.a.b=value`` (unknown fields and wrong types are rejected). A rerun
with the same workdir resumes from its latest checkpoint. Multi-process: pass ``--coordinator_address
host:port --num_processes N --process_id i`` to every process (or launch under SLURM / Open MPI).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from spinal_jax import config as config_lib
from spinal_jax.errors import UserError, cli_logging, exit_with_message

FLAGS = flags.FLAGS
config_lib.define_config_flag(FLAGS, sys.argv)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the summary.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "Index of this process (multi-process runs).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a bad config file, ``:ARG``, field or value is one line and exit status 2."""
    try:
        return config_lib.parse_config_flags(FLAGS, argv)
    except UserError as err:
        exit_with_message(err)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli_logging()
    from spinal_jax import distributed, training

    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        summary = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as err:
        exit_with_message(err)
    except FloatingPointError as err:
        exit_with_message(err, "error: training stopped")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
