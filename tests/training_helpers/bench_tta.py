"""Run in a fresh process: ``bench.time_to_accuracy`` on a small device-resident MNIST run, then check
that neither TensorFlow, tensorboardX nor torch was imported. Prints ``TTA <json record>``.

Usage: python -m tests.training_helpers.bench_tta TARGET
"""

from __future__ import annotations

import json
import sys

from spinal_jax import bench
from spinal_jax import config as config_lib
from tests.training_helpers.small_pipeline import SmallPipeline, mnist_data_config
from tests.training_helpers.tiny_model import TinyBNNet

SIZES = {"train": 200, "validation": 150, "test": 130}


def small_config(epochs: int):
    c = config_lib.base_config()
    c.data = mnist_data_config(batch_size=32, eval_batch_size=100)
    c.num_epochs = epochs
    c.optim.name = "adam"
    c.optim.learning_rate = 3e-3
    c.plateau.enabled = True
    c.log_every_steps = 4
    return c


def main() -> None:
    config = small_config(3)
    pipe = SmallPipeline(config.data, SIZES)
    record = bench.time_to_accuracy(
        config, float(sys.argv[1]), label="small", pipeline=pipe, model=TinyBNNet(bn_axis_name="batch")
    )
    loaded = sorted(m for m in ("tensorflow", "tensorboardX", "torch") if m in sys.modules)
    assert not loaded, f"the bench imported {loaded}"
    print("TTA " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
