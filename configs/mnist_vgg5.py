"""VGG-5 (10 conv layers) on the MNIST family (docs/SPINALNET.md, VGG-5):
``configs/mnist_vgg5.py:DATASET[,HEAD]`` with DATASET one of mnist, qmnist, fashion_mnist, kmnist,
emnist_digits, emnist_letters, emnist_balanced and HEAD 'default' (256->512(BN)->C) or 'spinal' (k=4,
w=128, dropout 0.5 + BN; the default here).

Recipe: Adam lr 0.005, batch 100, 200 epochs, reference augmentation (perspective + rotation 10; for
Fashion rotation + resized crop), random restart on plateau lr <- 0.005 * U**3 when the monitored
accuracy did not improve. Deviation: monitored on a held-out validation split, not on test.
QMNIST (``qmnist``, our TF-free builder, docs/DATA.md) tests on all 60,000 QMNIST test images (the paper
reports 99.68 %). Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, MNIST_DATASETS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(MNIST_DATASETS, "mnist"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "vgg5"
    c.model.head = args["head"]
    c.data = data_config(args["dataset"], batch_size=100)
    c.num_epochs = 200
    c.optim.name = "adam"
    c.optim.learning_rate = 0.005
    c.plateau.enabled = True
    c.plateau.power = 3.0
    return c
