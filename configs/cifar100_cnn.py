"""CIFAR-100 "CNN_dropout" (docs/SPINALNET.md, CIFAR CNN): the CIFAR CNN with its 4096->1024->512->100
head or the spinal head (w=256, dropout 0.1): ``configs/cifar100_cnn.py[:HEAD]``.

Recipe: Adam lr 1e-3, batch 200, 160 epochs, pad-4 crop + flip, lr /= 3 whenever the monitored
accuracy did not improve (monitored on validation here, on test in the reference).
Measured: not yet run.
"""

from spinal_jax.config import base_config, data_config, parse_arg


def get_config(arg: str | None = None):
    _, head = parse_arg(arg, "cifar100", "spinal", ("cifar100",))
    c = base_config()
    c.model.name = "cifar_cnn"
    c.model.head = head
    c.data = data_config("cifar100", batch_size=200, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    c.num_epochs = 160
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.plateau.enabled = True
    c.plateau.mode = "divide"
    c.plateau.factor = 3.0
    return c
