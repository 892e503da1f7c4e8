"""CIFAR-100 "CNN_dropout" (docs/SPINALNET.md, CIFAR CNN): the CIFAR CNN with its 4096->1024->512->100
head or the spinal head (w=256, dropout 0.1): ``configs/cifar100_cnn.py[:HEAD]``.

Recipe: Adam lr 1e-3, batch 200, 160 epochs, pad-4 crop + flip, lr /= 3 whenever the monitored
accuracy did not improve (monitored on validation here, on test in the reference).
Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("cifar100",), "cifar100"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "cifar_cnn"
    c.model.head = args["head"]
    c.data = data_config(args["dataset"], batch_size=200, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    c.num_epochs = 160
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.plateau.enabled = True
    c.plateau.mode = "divide"
    c.plateau.factor = 3.0
    return c
