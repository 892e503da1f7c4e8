"""VGG-5 on a subset of Google Quick, Draw! bitmaps (docs/SPINALNET.md, VGG-5; the Devpost
"Network Must Have Spine" experiment): ``configs/quickdraw_vgg5.py[:HEAD]``. The classes are
``config.data.classes`` (default: the six in ../shared/data/quickdraw_bitmap), with per-class
validation/test hold-outs.

Recipe: the MNIST VGG-5 one (Adam 0.005, batch 100, plateau restarts lr <- 0.005 * U**3 on validation),
30 epochs (there is no reference schedule for Quick Draw). Measured: 3 of 30 epochs, seed 0 only
(``python -m spinal_jax.reproduce --suite cpu``, 2026-12-06, the 2-core CPU machine under load;
docs/RESULTS.md): test at best validation 89.90 % (default) / 90.90 % (spinal), max test 90.57 / 90.90 %;
22-31 min per run. The 30-epoch protocol has not been run.
"""

from ml_collections import ConfigDict

from spinal_jax.config import HEADS, base_config, choice, data_config, parse_config_arg

ARG_TOKENS = {"dataset": choice(("quickdraw",), "quickdraw"), "head": choice(HEADS, "spinal")}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    c = base_config()
    c.model.name = "vgg5"
    c.model.head = args["head"]
    c.data = data_config(args["dataset"], batch_size=100)
    c.num_epochs = 30
    c.optim.name = "adam"
    c.optim.learning_rate = 0.005
    c.plateau.enabled = True
    c.plateau.power = 3.0
    return c
