"""MNIST default CNN (docs/SPINALNET.md, MNIST CNN): PyTorch's MNIST example CNN with its 320->50->10
head, or the spinal head (k=6 sub-layers of width 8) with ``configs/mnist_cnn.py:spinal``;
``:qmnist[,spinal]`` trains the same network on QMNIST (the reference script's docstring: the same code
serves QMNIST by swapping the data set).

Recipe: SGD lr 0.01, momentum 0.5, batch 64, 8 epochs, no augmentation, normalised (0.1307, 0.3081).
Deviation: 10 % of train is held out for validation (the reference has none).
Measured (default head, 2026-11-26, a 2-core CPU machine, jax 0.10.2, no other load): 8 epochs in 192 s
wall (183 s of training, 2,360 img/s); best validation 97.83 % (epoch 7), test at best validation
97.98 %, max test 98.02 %.
Both heads, seeds 0-2 (``python -m spinal_jax.reproduce --suite cpu``, 2026-12-06, the 2-core CPU machine
under load, jax 0.10.2; docs/RESULTS.md), 4-5 min per run: test at best validation 98.08 +- 0.15 %
(default) vs 98.25 +- 0.20 % (spinal), spinal - default +0.16 pp [-0.002, +0.33] (no difference within
the 95 % interval); max test 98.10 +- 0.13 vs 98.32 +- 0.13 % (+0.22 pp [+0.16, +0.29]). With
``--config.data.name=quickdraw`` (6 classes): 89.43 +- 0.31 vs 90.32 +- 0.11 % (+0.89 pp [+0.003, +1.77]).
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("mnist", "qmnist"), "mnist"), "head": choice(HEADS, "default")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "mnist_cnn"
    c.model.head = args["head"]
    c.data = data_config(args["dataset"], batch_size=64, augment="none")
    c.num_epochs = 8
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.01
    c.optim.momentum = 0.5
    return c
