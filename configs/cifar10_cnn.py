"""CIFAR-10 "CNN_dropout" (docs/SPINALNET.md, CIFAR CNN): 6 convs to 4096 features, then the
4096->1024->512->10 head or the spinal head (w=128, dropout 0.1): ``configs/cifar10_cnn.py[:HEAD]``.

Recipe: Adam lr 1e-3, batch 100, 160 epochs, pad-4 crop + flip, no normalisation. The spinal script's
lr never decays (its best accuracy is never updated), so the lr is constant here for both heads; the
default script's ad-hoc /3 decay is not reproduced. The stock builder wants cifar-10-binary.tar.gz;
the JPEG copy in ../shared/data trains with ``--config.data.name=image_folder
--config.data.manual_dir=../shared/data/cifar10_jpeg``. Measured: not yet run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("cifar10", "image_folder"), "cifar10"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "cifar_cnn"
    c.model.head = args["head"]
    c.data = data_config(args["dataset"], batch_size=100)
    c.num_epochs = 160
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    return c
