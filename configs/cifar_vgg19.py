"""VGG-19-BN on CIFAR-10/100 (docs/SPINALNET.md, CIFAR VGG): ``configs/cifar_vgg19.py:DATASET[,HEAD]``
with DATASET cifar10 | cifar100 and HEAD default (512->4096->4096->C) | spinal (w=512, dropout 0.5).

Recipe: Adam lr 1e-4, 200 epochs, pad-4 crop + flip; CIFAR-10 batch 100 without normalisation,
CIFAR-100 batch 200 normalised with its statistics; random restart on plateau lr <- 1e-4 * U**3.
Measured: not yet run.
"""

from spinal_jax.config import base_config, data_config, parse_arg


def get_config(arg: str | None = None):
    dataset, head = parse_arg(arg, "cifar10", "spinal", ("cifar10", "cifar100"))
    c = base_config()
    c.model.name = "cifar_vgg19_bn"
    c.model.head = head
    c.data = data_config(dataset, batch_size=100 if dataset == "cifar10" else 200)
    c.num_epochs = 200
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-4
    c.plateau.enabled = True
    c.plateau.power = 3.0
    return c
