"""Run train_and_evaluate on real MNIST arrays in this process (a subprocess of the loop tests).

Usage: python -m tests.training_helpers.run_loop WORKDIR [key=value ...]
Keys: n_train, n_val, n_test, batch, epochs, max_steps, ckpt_every, lr, sleep (seconds per step, so a
test can signal the run mid-epoch), model ('tiny' | a registry name), devices (local CPU devices),
coordinator, nproc, pid (a multi-process run on this machine).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_ARGS = dict(a.split("=", 1) for a in sys.argv[2:])
if "devices" in _ARGS:  # must precede the jax import
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_ARGS['devices']}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from spinal_jax import checkpoints, training  # noqa: E402
from spinal_jax import config as config_lib  # noqa: E402
from tests.training_helpers.array_pipeline import ArrayPipeline  # noqa: E402
from tests.training_helpers.tiny_model import TinyBNNet  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, force=True)
    workdir = sys.argv[1]
    args = _ARGS
    if "coordinator" in args:
        from spinal_jax import distributed

        distributed.initialize(args["coordinator"], int(args["nproc"]), int(args["pid"]))
    get = lambda k, d: type(d)(args.get(k, d))  # noqa: E731
    config = config_lib.base_config()
    config.data = config_lib.data_config("mnist", batch_size=get("batch", 32))
    config.num_epochs = get("epochs", 2)
    config.max_train_steps = get("max_steps", 0)
    config.checkpoint_every_steps = get("ckpt_every", 0)
    config.optim.name = "adam"
    config.optim.learning_rate = get("lr", 0.003)
    config.log_every_steps = 5
    config.plateau.enabled = get("plateau", 0) == 1
    config.plateau.power = 3.0
    pipe = ArrayPipeline(get("n_train", 640), get("n_val", 200), get("n_test", 300), config.data.batch_size)
    sleep = get("sleep", 0.0)
    if sleep:
        original = pipe.train_batch

        def slow(step, seed_offset=0):
            time.sleep(sleep)
            print(f"STEP {step}", flush=True)
            return original(step, seed_offset)

        pipe.train_batch = slow
    name = args.get("model", "tiny")
    model = TinyBNNet(bn_axis_name="batch") if name == "tiny" else None
    if model is None:
        config.model.name = name
    summary = training.train_and_evaluate(config, workdir, pipeline=pipe, model=model)
    print("SUMMARY " + json.dumps(summary), flush=True)
    print(f"DEVICES {jax.process_count()}x{jax.local_device_count()}", flush=True)
    params = checkpoints.final_params(workdir)  # every process: Orbax synchronises them
    if jax.process_index() == 0:
        np.savez(
            f"{workdir}/final_params.npz",
            **{
                "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_leaves_with_path(params)
            },
        )


if __name__ == "__main__":
    main()
