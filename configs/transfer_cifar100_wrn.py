"""Transfer learning on CIFAR-100 (docs/SPINALNET.md, Transfer learning;
``Transfer_Learning_CIFAR100.py``): an ImageNet-pretrained Wide-ResNet-101-2 with a spinal head, every
layer fine-tuned.
``configs/transfer_cifar100_wrn.py[:HEAD][,MODE]``: HEAD spinal (default) | default (Linear fc); MODE
full (default, the reference's) | linear_probe | separate_lr. Pass the converted weights with
``--config.pretrained=ckpt/wrn101`` (docs/transfer_learning.md).

Recipe: head = SpinalNet w=512 (halves of the 2048 pooled features, 4 layers, dropout 0.5 + BatchNorm);
SGD momentum 0.9, lr 1e-3, StepLR(7, 0.1) per epoch, no weight decay, batch 24, 50 epochs; images
resized to 256 (train: + pad-4 crop and flip; the reference resizes to 272, rotates +-15 degrees and
crops 256), CIFAR-100 normalisation statistics.

Paper / reference: 88.34 % test ("WRN Spinal 512x4: C-100 88.34", selected on the test split: compare
summary.json's max_test_over_epochs); paper chart: 88.36 %.

Measured: not yet run at full scale (needs a GPU and the ImageNet weights).
"""

from ml_collections import ConfigDict

from spinal_jax.config import TRANSFER_TOKENS, choice, parse_config_arg, transfer_config

ARG_TOKENS = {"dataset": choice(("cifar100",), "cifar100"), **TRANSFER_TOKENS}


def get_config(arg: str | None = None) -> ConfigDict:
    return transfer_config(
        **parse_config_arg(arg, **ARG_TOKENS), spinal_width=512, batch_size=24, num_epochs=50
    )
