"""ResNet-50 on ImageNet-1k with its linear head (torchvision layout): the standard recipe, the
baseline of ``imagenet_spinal.py``. ``configs/imagenet_resnet50.py[:spinal]`` switches the head.

Recipe: SGD Nesterov momentum 0.9, lr 0.1 x global_batch / 256, 5 warm-up epochs then cosine to 0,
weight decay 1e-4 on kernels only (not BatchNorm, not biases), 90 epochs, global batch 1024,
bfloat16 compute with float32 parameters, label smoothing off (``--config.label_smoothing=0.1`` to
use it), inception crop + flip. Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, choice, imagenet_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("imagenet2012",), "imagenet2012"), "head": choice(HEADS, "default")}


def get_config(arg: str | None = None) -> ConfigDict:
    return imagenet_config("resnet50", parse_config_arg(arg, **ARG_TOKENS)["head"])
