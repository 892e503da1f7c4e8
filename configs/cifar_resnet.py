"""The reference's CIFAR ResNet (docs/SPINALNET.md, CIFAR ResNet): ResNet-18 on CIFAR-10, ResNet-34 on
CIFAR-100: ``configs/cifar_resnet.py:DATASET[,HEAD]``; HEAD default (pool + Linear 256->C) | spinal (4
spatial splits, w=256 / 512).

Recipe: Adam lr 1e-3, batch 200, 160 epochs, pad-4 crop + flip, normalised with CIFAR-100 statistics
(for CIFAR-10 too), random restart on plateau lr <- 1e-3 * U**5. Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
ARG_TOKENS = {"dataset": choice(("cifar10", "cifar100"), "cifar10"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    dataset = args["dataset"]
    c = base_config()
    c.model.name = "cifar_resnet18" if dataset == "cifar10" else "cifar_resnet34"
    c.model.head = args["head"]
    c.data = data_config(dataset, batch_size=200, mean=CIFAR100_STATS[0], std=CIFAR100_STATS[1])
    c.num_epochs = 160
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.plateau.enabled = True
    c.plateau.power = 5.0
    return c
