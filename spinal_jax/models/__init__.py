"""Model families of the SpinalNet paper, behind one registry and one head factory.

>>> from spinal_jax.models import create_model, list_models
>>> model = create_model("vgg5", num_classes=10, head="spinal", spinal_width=64)
"""

from spinal_jax.models.heads import (
    HEADS,
    DefaultHeadConfig,
    HeadConfig,
    SpinalHeadConfig,
    make_head,
)
from spinal_jax.models.registry import (
    ModelSpec,
    create_model,
    get_spec,
    head_path,
    list_models,
    register_model,
)

# Importing a family module registers its models.
from spinal_jax.models import mnist_cnn as _mnist_cnn  # noqa: F401,E402  isort: skip
from spinal_jax.models import vgg5 as _vgg5  # noqa: F401,E402  isort: skip
from spinal_jax.models import cifar as _cifar  # noqa: F401,E402  isort: skip
from spinal_jax.models import resnet as _resnet  # noqa: F401,E402  isort: skip
from spinal_jax.models import vgg as _vgg  # noqa: F401,E402  isort: skip

__all__ = [
    "HEADS",
    "DefaultHeadConfig",
    "HeadConfig",
    "ModelSpec",
    "SpinalHeadConfig",
    "create_model",
    "get_spec",
    "head_path",
    "list_models",
    "make_head",
    "register_model",
]
