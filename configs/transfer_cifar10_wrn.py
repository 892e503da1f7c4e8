"""Transfer learning on CIFAR-10 (docs/SPINALNET.md, Transfer learning;
``Transfer_Learning_CIFAR10.py``): an ImageNet-pretrained Wide-ResNet-101-2 with a spinal head, every
layer fine-tuned.
``configs/transfer_cifar10_wrn.py[:DATASET][,HEAD][,MODE]``: DATASET cifar10 (tfds, needs
cifar-10-binary.tar.gz) | cifar10_jpeg (the JPEG copy in shared/data); HEAD spinal (default) | default
(torchvision's Linear fc); MODE full (default, the reference's) | linear_probe | separate_lr.
Pass the converted weights: ``--config.pretrained=ckpt/wrn101`` (docs/transfer_learning.md).

Recipe: head = SpinalNet w=20 (halves of the 2048 pooled features, 4 layers, dropout 0.5 + BatchNorm:
"20x4 neurons, dropout+BN"; 84,170 parameters, 84,010 without the BatchNorm ones); SGD momentum 0.9,
lr 1e-3, StepLR(7, 0.1) per epoch, no weight decay, batch 28, 50 epochs; images resized to 256
(train: + pad-4 crop and flip; the reference resizes to 272, rotates +-15 degrees and crops 256),
CIFAR-100 normalisation statistics.

Paper / reference: 98.12 % test with the spinal head, 98.22 % with the plain Linear head (both written
in the file; the reference selects on the test split, see summary.json's max_test_over_epochs; the
active code of that file trains vgg19_bn with the head on its unused ``.fc``, a bug this config cannot
reproduce: the head here replaces ``fc`` of the WRN). Paper chart: 98.14 %.

Measured: not yet run at full scale (needs a GPU and the ImageNet weights).
"""

from ml_collections import ConfigDict

from spinal_jax.config import TRANSFER_TOKENS, choice, parse_config_arg, transfer_config

ARG_TOKENS = {"dataset": choice(("cifar10", "cifar10_jpeg"), "cifar10"), **TRANSFER_TOKENS}


def get_config(arg: str | None = None) -> ConfigDict:
    return transfer_config(
        **parse_config_arg(arg, **ARG_TOKENS), spinal_width=20, batch_size=28, num_epochs=50
    )
