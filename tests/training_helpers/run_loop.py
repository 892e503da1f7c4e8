"""Run train_and_evaluate on real MNIST arrays in this process (a subprocess of the loop tests).

Usage: python -m tests.training_helpers.run_loop WORKDIR [key=value ...]
Keys: n_train, n_val, n_test, batch, epochs, max_steps, ckpt_every, lr, sleep (seconds per step, so a
test can signal the run mid-epoch), model ('tiny' | a registry name), print_params.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import jax
import ml_collections
import numpy as np

from spinal_jax import config as config_lib
from spinal_jax import training
from tests.training_helpers.array_pipeline import ArrayPipeline
from tests.training_helpers.tiny_model import TinyBNNet


def main() -> None:
    logging.basicConfig(level=logging.INFO, force=True)
    workdir = sys.argv[1]
    args = dict(a.split("=", 1) for a in sys.argv[2:])
    get = lambda k, d: type(d)(args.get(k, d))  # noqa: E731
    config = config_lib.base_config()
    config.data = ml_collections.ConfigDict({"batch_size": get("batch", 32), "augment_on": "host"})
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

        def slow(step):
            time.sleep(sleep)
            print(f"STEP {step}", flush=True)
            return original(step)

        pipe.train_batch = slow
    name = args.get("model", "tiny")
    model = TinyBNNet(bn_axis_name="batch") if name == "tiny" else None
    if model is None:
        config.model.name = name
    summary = training.train_and_evaluate(config, workdir, pipeline=pipe, model=model)
    print("SUMMARY " + json.dumps(summary), flush=True)
    if jax.process_index() == 0:
        params = training.final_params(workdir)
        np.savez(
            f"{workdir}/final_params.npz",
            **{
                "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_leaves_with_path(params)
            },
        )


if __name__ == "__main__":
    main()
