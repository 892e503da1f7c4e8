"""The training configuration shared by every ``configs/*.py``: defaults and validation.

A config file builds on :func:`base_config` and changes only what its recipe needs. ml_collections
rejects unknown fields and wrong types when the config is locked (``config_flags`` locks it);
:func:`validate_config` rejects bad values, naming the field and what it accepts.
"""

from __future__ import annotations

from typing import Any

import ml_collections

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "warmup_cosine")
DTYPES = ("float32", "bfloat16")
MONITORS = ("validation", "test")
PLATEAU_MODES = ("random", "divide")
HEADS = ("default", "spinal")

# Fields that may differ between a workdir's stored config and a resumed run without refusing it.
RESUMABLE_FIELDS = (
    "overwrite",
    "num_epochs",
    "log_every_steps",
    "max_train_steps",
    "checkpoint_every_epochs",
    "tensorboard",
)


def data_config(dataset: str, **fields: Any) -> ml_collections.ConfigDict:
    """The data pipeline's default config for ``dataset`` with ``fields`` set on it.

    Imported lazily so that loading ``spinal_jax.config`` does not import the data stack.
    """
    from spinal_jax.data import default_data_config

    cfg = default_data_config()
    cfg.name = dataset
    with cfg.unlocked():
        for key, value in fields.items():
            if key not in cfg:
                raise ValueError(f"data config has no field {key!r}; known fields: {sorted(cfg.keys())}.")
            cfg[key] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Every training field with its default; see docs/TRAINING.md for what each one does."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = "mnist_cnn"  # a name from spinal_jax.models.list_models()
    c.model.head = "default"  # 'default' | 'spinal'
    c.model.num_classes = 0  # 0: take it from the data pipeline
    c.data = ml_collections.ConfigDict()  # filled by data_config(...) in each config file

    c.num_epochs = 1
    c.max_train_steps = 0  # > 0: stop after this many steps (smoke runs, tests)
    c.seed = 0
    c.dtype = "float32"  # compute dtype; parameters stay float32
    c.label_smoothing = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # 'sgd' | 'adam' | 'adamw'
    c.optim.learning_rate = 0.01
    c.optim.lr_batch_reference = 0  # > 0: lr = learning_rate * global_batch / lr_batch_reference
    c.optim.momentum = 0.0  # sgd only
    c.optim.nesterov = False  # sgd only
    c.optim.b1 = 0.9  # adam/adamw
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # never applied to BatchNorm parameters or biases

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # 'constant' | 'step' | 'warmup_cosine'
    c.schedule.step_epochs = 7  # step: multiply by gamma every step_epochs epochs (as StepLR)
    c.schedule.gamma = 0.1
    c.schedule.warmup_epochs = 5.0  # warmup_cosine: linear warm-up from 0, then cosine to 0
    c.schedule.final_lr_fraction = 0.0

    # The reference's "random restart on plateau": after an epoch whose monitored accuracy did not
    # beat the best so far, lr <- learning_rate * U**power, U ~ U(0, 1) (or lr / factor, CIFAR-100 CNN).
    c.plateau = ml_collections.ConfigDict()
    c.plateau.enabled = False
    c.plateau.mode = "random"  # 'random': lr <- learning_rate * U**power; 'divide': lr <- lr / factor
    c.plateau.power = 3.0
    c.plateau.factor = 3.0
    c.plateau.monitor = "validation"  # 'validation' | 'test' (test = the reference's protocol)

    c.log_every_steps = 50
    c.eval_test = True  # evaluate the test split every epoch too
    c.checkpoint_every_steps = 0  # > 0: also save every N steps (besides every epoch end)
    # Save at every N-th epoch end (and the last); a better epoch in between is held and written to
    # best/ with the next save. > 1 saves time where epochs take seconds (data.device_resident).
    c.checkpoint_every_epochs = 1
    c.tensorboard = True  # also write TensorBoard event files (tensorboardX); metrics.jsonl always
    c.keep_checkpoints = 2  # latest K; the best (by validation accuracy) is kept apart
    c.async_checkpoints = True
    c.init_from = ""  # a workdir or checkpoint step dir: warm-start parameters (and BN stats) only
    c.overwrite = False  # allow a workdir holding a run of a different config to be wiped
    return c


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"config.{field} = {value!r} is not valid: use one of {choices}.")


def _check_positive(value: float, field: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"config.{field} must be {bound}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise one ValueError naming the first invalid field and the values it accepts."""
    missing = [k for k in base_config().keys() if k not in config]
    if missing:
        raise ValueError(f"config lacks fields {missing}: build it from spinal_jax.config.base_config().")
    _check_choice(config.model.head, "model.head", HEADS)
    _check_choice(config.optim.name, "optim.name", OPTIMIZERS)
    _check_choice(config.schedule.name, "schedule.name", SCHEDULES)
    _check_choice(config.dtype, "dtype", DTYPES)
    _check_choice(config.plateau.monitor, "plateau.monitor", MONITORS)
    _check_choice(config.plateau.mode, "plateau.mode", PLATEAU_MODES)
    _check_positive(config.plateau.factor, "plateau.factor")
    _check_positive(config.num_epochs, "num_epochs")
    _check_positive(config.optim.learning_rate, "optim.learning_rate")
    _check_positive(config.optim.weight_decay, "optim.weight_decay", allow_zero=True)
    _check_positive(config.optim.lr_batch_reference, "optim.lr_batch_reference", allow_zero=True)
    _check_positive(config.max_train_steps, "max_train_steps", allow_zero=True)
    _check_positive(config.log_every_steps, "log_every_steps")
    _check_positive(config.checkpoint_every_steps, "checkpoint_every_steps", allow_zero=True)
    _check_positive(config.checkpoint_every_epochs, "checkpoint_every_epochs")
    _check_positive(config.keep_checkpoints, "keep_checkpoints")
    _check_positive(config.model.num_classes, "model.num_classes", allow_zero=True)
    _check_positive(config.schedule.step_epochs, "schedule.step_epochs")
    _check_positive(config.schedule.warmup_epochs, "schedule.warmup_epochs", allow_zero=True)
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")
    if not 0.0 <= config.optim.momentum < 1.0:
        raise ValueError(f"config.optim.momentum must be in [0, 1), got {config.optim.momentum!r}.")
    if config.optim.nesterov and (config.optim.name != "sgd" or config.optim.momentum == 0):
        raise ValueError("config.optim.nesterov needs optim.name='sgd' and optim.momentum > 0.")
    if config.plateau.enabled and config.schedule.name != "constant":
        raise ValueError(
            "config.plateau.enabled sets the learning rate itself: use it with schedule.name='constant', "
            f"not {config.schedule.name!r}."
        )


def parse_arg(
    arg: str | None, default_dataset: str, default_head: str, datasets: tuple[str, ...]
) -> tuple[str, str]:
    """``'DATASET'``, ``'HEAD'`` or ``'DATASET,HEAD'`` (the ``configs/x.py:ARG`` suffix) -> (dataset, head).

    ``_`` may stand for ``/`` in data set names (``emnist_letters`` = ``emnist/letters``).
    """
    dataset, head = default_dataset, default_head
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        if token in HEADS:
            head = token
        elif token in datasets or token.replace("_", "/", 1) in datasets:
            dataset = token if token in datasets else token.replace("_", "/", 1)
        else:
            raise ValueError(
                f"Config argument {token!r} is neither a head {HEADS} nor a data set {datasets}."
            )
    return dataset, head


def imagenet_config(model: str, head: str) -> ml_collections.ConfigDict:
    """The standard ImageNet ResNet recipe: SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs then
    cosine, weight decay 1e-4 on kernels only, 90 epochs, global batch 1024, bfloat16 compute."""
    c = base_config()
    c.model.name = model
    c.model.head = head
    c.data = data_config("imagenet2012", batch_size=1024, eval_batch_size=1024)
    c.num_epochs = 90
    c.dtype = "bfloat16"
    c.label_smoothing = 0.0  # optional: 0.1 is the common choice
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.lr_batch_reference = 256
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 1e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_epochs = 5.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
