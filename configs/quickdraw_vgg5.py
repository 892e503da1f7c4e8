"""VGG-5 on a subset of Google Quick, Draw! bitmaps (docs/SPINALNET.md, VGG-5; the Devpost
"Network Must Have Spine" experiment): ``configs/quickdraw_vgg5.py[:HEAD]``. The classes are
``config.data.classes`` (default: the six in ../shared/data/quickdraw_bitmap), with per-class
validation/test hold-outs.

Recipe: the MNIST VGG-5 one (Adam 0.005, batch 100, plateau restarts lr <- 0.005 * U**3 on validation),
30 epochs (there is no reference schedule for Quick Draw). Measured: not yet run.
"""

from spinal_jax.config import base_config, data_config, parse_arg


def get_config(arg: str | None = None):
    _, head = parse_arg(arg, "quickdraw", "spinal", ("quickdraw",))
    c = base_config()
    c.model.name = "vgg5"
    c.model.head = head
    c.data = data_config("quickdraw", batch_size=100)
    c.num_epochs = 30
    c.optim.name = "adam"
    c.optim.learning_rate = 0.005
    c.plateau.enabled = True
    c.plateau.power = 3.0
    return c
