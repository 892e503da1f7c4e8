"""ResNet-50 on ImageNet-1k with the spinal head (halves of the 2048 pooled features): the recipe of
``imagenet_resnet50.py`` (SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs then cosine, weight
decay 1e-4 not on BatchNorm/biases, optional label smoothing, bfloat16, 90 epochs, batch 1024).
Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import imagenet_config, parse_config_arg

ARG_TOKENS = {}  # no ARG: override fields with --config.FIELD=VALUE


def get_config(arg: str | None = None) -> ConfigDict:
    parse_config_arg(arg, **ARG_TOKENS)
    return imagenet_config("resnet50", "spinal")
