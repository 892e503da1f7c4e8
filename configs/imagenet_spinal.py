"""ResNet-50 on ImageNet-1k with the spinal head (halves of the 2048 pooled features): the recipe of
``imagenet_resnet50.py`` (SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs then cosine, weight
decay 1e-4 not on BatchNorm/biases, optional label smoothing, bfloat16, 90 epochs, batch 1024).
Measured: not yet run.
"""

from spinal_jax.config import imagenet_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(
            f"imagenet_spinal.py takes no argument (got {arg!r}); override fields with --config.X=Y."
        )
    return imagenet_config("resnet50", "spinal")
