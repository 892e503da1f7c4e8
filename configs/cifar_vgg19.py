"""VGG-19-BN on CIFAR-10/100 (docs/SPINALNET.md, CIFAR VGG): ``configs/cifar_vgg19.py:DATASET[,HEAD]``
with DATASET cifar10 | cifar100 and HEAD default (512->4096->4096->C) | spinal (w=512, dropout 0.5).

Recipe: Adam lr 1e-4, 200 epochs, pad-4 crop + flip; CIFAR-10 batch 100 without normalisation,
CIFAR-100 batch 200 normalised with its statistics; random restart on plateau lr <- 1e-4 * U**3.
Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("cifar10", "cifar100"), "cifar10"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    dataset = args["dataset"]
    c = base_config()
    c.model.name = "cifar_vgg19_bn"
    c.model.head = args["head"]
    c.data = data_config(dataset, batch_size=100 if dataset == "cifar10" else 200)
    c.num_epochs = 200
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-4
    c.plateau.enabled = True
    c.plateau.power = 3.0
    return c
