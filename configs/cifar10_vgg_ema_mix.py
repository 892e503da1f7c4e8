"""CIFAR-10 VGG-11-BN with a modern recipe: EMA of the weights, mixup + CutMix, label smoothing, SGD with
warm-up and cosine, on the JPEG copy of CIFAR-10 in ../shared/data: ``configs/cifar10_vgg_ema_mix.py[:HEAD]``.

Not a reproduction of the paper (its CIFAR VGGs train with Adam and random restarts, see
configs/cifar_vgg19.py): a recipe showing the training features together. SGD momentum 0.9, lr 0.05 x
batch/128 with 2 warm-up epochs then cosine, weight decay 5e-4 on kernels, batch 128, 30 epochs, pad-4
crop + flip, mixup alpha 0.2 / CutMix alpha 1.0 (switch 0.5, per example), label smoothing 0.1, EMA decay
0.999 with warm-up. The head: the reference CIFAR VGG's (default) or the spinal one (w=512, dropout 0.5).
Measured: not yet run (30 epochs of a VGG-11 need a GPU to be practical).
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "cifar_vgg11_bn"
    c.model.head = args["head"]
    c.data = data_config(
        "image_folder",
        batch_size=128,
        eval_batch_size=500,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
    )
    c.num_epochs = 30
    c.label_smoothing = 0.1
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.05
    c.optim.lr_batch_reference = 128
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_epochs = 2.0
    c.ema.decay = 0.999
    c.ema.warmup = True
    return c
