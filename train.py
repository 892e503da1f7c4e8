"""Train a SpinalNet model: ``python train.py --config configs/<name>.py[:ARG] --workdir DIR``.

Override any field with ``--config.a.b=value`` (unknown fields and wrong types are rejected). A rerun
with the same workdir resumes from its latest checkpoint. Multi-process: pass ``--coordinator_address
host:port --num_processes N --process_id i`` to every process (or launch under SLURM / Open MPI).
"""

from __future__ import annotations

import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the summary.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "Index of this process (multi-process runs).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one clear message for a ``--config.X`` override naming no field and for
    a config file that cannot be loaded."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:  # how ml_collections reports a missing field
        key = str(err).strip("\"'")
        overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        field = next((o for o in overrides if key in o.split(".")[1:]), f"config.{key}")
        sys.exit(
            f"Unknown config field {field!r}: the config has no field {key!r} there. Check the spelling "
            "against the config file and docs/TRAINING.md (fields); new fields cannot be added from the "
            "command line."
        )
    except (ValueError, OSError) as err:  # the config file's own checks (its :ARG), a missing file
        sys.exit(f"Invalid --config: {err}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # spinal_jax's own messages at INFO; other libraries (Orbax is chatty) at WARNING.
    logging.set_verbosity(logging.WARNING)
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    package_log = std_logging.getLogger("spinal_jax")
    package_log.setLevel(std_logging.INFO)
    package_log.addHandler(handler)
    package_log.propagate = False
    from spinal_jax import distributed, training
    from spinal_jax.errors import UserError, exit_with_message

    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        summary = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as err:
        exit_with_message(err, "Invalid setup")
    except FloatingPointError as err:
        exit_with_message(err, "Training stopped")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
