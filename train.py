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
    """absl's flag parsing, with one line (exit status 2) for an override naming no field, a value of the
    wrong type, and a config file or ``:ARG`` that cannot be loaded."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as err:  # how ml_collections reports a missing field
        key = str(err).strip("\"'")
        overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        field = next((o for o in overrides if key in o.split(".")[1:]), f"config.{key}")
        _refuse(
            f"Unknown config field {field!r}: the config has no field {key!r} there. Check the spelling "
            "against the config file and docs/TRAINING.md (fields); new fields cannot be added from the "
            "command line."
        )
    except flags.Error as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if "Error whilst parsing config file" in str(err):  # ml_collections appends the traceback
            _refuse(f"--config: {lines[-1].split(': ', 1)[-1]}")
        _refuse(f"{lines[0]} (python train.py --helpfull lists the flags)")


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
    except OSError as err:  # a --config file that cannot be read surfaces on first access
        exit_with_message(UserError(f"{err} (check the --config path)"))
    except UserError as err:
        exit_with_message(err)
    except FloatingPointError as err:
        exit_with_message(err, "Training stopped")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
