"""The training configuration shared by every ``configs/*.py``: defaults and validation.

A config file builds on :func:`base_config` and changes only what its recipe needs. ml_collections
rejects unknown fields and wrong types when the config is locked (``config_flags`` locks it);
:func:`validate_config` rejects bad values, naming the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from spinal_jax.errors import UserError
from spinal_jax.models.heads import HEADS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "warmup_cosine")
DTYPES = ("float32", "bfloat16")
MONITORS = ("validation", "test")
PLATEAU_MODES = ("random", "divide")
FINETUNE_MODES = ("full", "linear_probe", "separate_lr")

# Fields that may differ between a workdir's stored config and a resumed run without refusing it.
RESUMABLE_FIELDS = (
    "overwrite",
    "num_epochs",
    "log_every_steps",
    "max_train_steps",
    "checkpoint_every_epochs",
    "tensorboard",
    "profile_steps",
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
                raise UserError(f"data config has no field {key!r}; known fields: {sorted(cfg.keys())}.")
            cfg[key] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Every training field with its default; see docs/TRAINING.md for what each one does."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = "mnist_cnn"  # a name from spinal_jax.models.list_models()
    c.model.head = "default"  # 'default' | 'spinal'
    c.model.num_classes = 0  # 0: take it from the data pipeline
    # Further module fields for spinal_jax.models.create_model, e.g. spinal_width / spinal_dropout / spinal_bn
    # of the ImageNet ResNets and VGGs (configs set them; --config.model.kwargs.spinal_width=512 overrides).
    c.model.kwargs = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()  # filled by data_config(...) in each config file

    c.num_epochs = 1
    c.max_train_steps = 0  # > 0: stop after this many steps (smoke runs, tests)
    c.seed = 0
    # > 1: train this many models in one compiled program, replica r seeded as a run with seed + r and
    # data.seed + r (its own initialisation, dropout, augmentation and data order); see docs/TRAINING.md.
    c.num_seeds = 1
    c.dtype = "float32"  # compute dtype; parameters stay float32
    c.label_smoothing = 0.0
    c.optim = _optim_fields()
    c.schedule = _schedule_fields()
    c.plateau = _plateau_fields()
    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.0  # > 0: keep an exponential moving average of the weights, evaluated every epoch
    c.ema.warmup = False  # decay min(decay, (1 + n) / (10 + n)) after n updates
    _add_run_fields(c)
    return c


def _optim_fields() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.name = "sgd"  # 'sgd' | 'adam' | 'adamw'
    o.learning_rate = 0.01
    o.lr_batch_reference = 0  # > 0: lr = learning_rate * global_batch / lr_batch_reference
    o.momentum = 0.0  # sgd only
    o.nesterov = False  # sgd only
    o.b1 = 0.9  # adam/adamw
    o.b2 = 0.999
    o.eps = 1e-8
    o.weight_decay = 0.0  # never applied to BatchNorm parameters or biases
    o.accum_steps = 1  # > 1: each batch is split into this many micro-batches, one update per batch
    return o


def _schedule_fields() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.name = "constant"  # 'constant' | 'step' | 'warmup_cosine'
    s.step_epochs = 7  # step: multiply by gamma every step_epochs epochs (as StepLR)
    s.gamma = 0.1
    s.warmup_epochs = 5.0  # warmup_cosine: linear warm-up from 0, then cosine to 0
    s.final_lr_fraction = 0.0
    return s


def _plateau_fields() -> ml_collections.ConfigDict:
    """The reference's "random restart on plateau": after an epoch whose monitored accuracy did not
    beat the best so far, lr <- learning_rate * U**power, U ~ U(0, 1) (or lr / factor, CIFAR-100 CNN)."""
    p = ml_collections.ConfigDict()
    p.enabled = False
    p.mode = "random"  # 'random': lr <- learning_rate * U**power; 'divide': lr <- lr / factor
    p.power = 3.0
    p.factor = 3.0
    p.monitor = "validation"  # 'validation' | 'test' (test = the reference's protocol)
    return p


def _add_run_fields(c: ml_collections.ConfigDict) -> None:
    """Logging, evaluation, checkpoints, warm start, fine-tuning and profiling fields."""
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
    # Transfer learning (docs/transfer_learning.md): a converted Orbax checkpoint (python -m
    # spinal_jax.convert) or a torchvision/timm .pth/.safetensors file; its backbone is loaded into a fresh
    # run of a torchvision model.name, whose head (fc / classifier) stays freshly initialised.
    c.pretrained = ""
    c.finetune = ml_collections.ConfigDict()
    c.finetune.mode = "full"  # full | linear_probe (backbone and its BN statistics frozen) | separate_lr
    c.finetune.backbone_lr_multiplier = 0.1  # separate_lr: backbone lr = this x the head's (scheduled) lr
    c.profile_steps = ""  # 'START:STOP': a jax.profiler trace of those steps into <workdir>/profile
    c.overwrite = False  # allow a workdir holding a run of a different config to be wiped


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config.{field} = {value!r} is not valid: use one of {choices}.")


def _check_positive(value: float, field: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"config.{field} must be {bound}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise one :class:`UserError` naming the first invalid field and the values it accepts."""
    missing = [k for k in base_config().keys() if k not in config]
    if missing:
        raise UserError(f"config lacks fields {missing}: build it from spinal_jax.config.base_config().")
    _check_model_name(config.model.name)
    _check_choice(config.model.head, "model.head", HEADS)
    _check_choice(config.optim.name, "optim.name", OPTIMIZERS)
    _check_choice(config.schedule.name, "schedule.name", SCHEDULES)
    _check_choice(config.dtype, "dtype", DTYPES)
    _check_choice(config.plateau.monitor, "plateau.monitor", MONITORS)
    _check_choice(config.plateau.mode, "plateau.mode", PLATEAU_MODES)
    _check_positive(config.plateau.factor, "plateau.factor")
    _check_positive(config.num_epochs, "num_epochs")
    _check_positive(config.num_seeds, "num_seeds")
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
        raise UserError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")
    if not 0.0 <= config.optim.momentum < 1.0:
        raise UserError(f"config.optim.momentum must be in [0, 1), got {config.optim.momentum!r}.")
    if config.optim.nesterov and (config.optim.name != "sgd" or config.optim.momentum == 0):
        raise UserError("config.optim.nesterov needs optim.name='sgd' and optim.momentum > 0.")
    _check_choice(config.finetune.mode, "finetune.mode", FINETUNE_MODES)
    _check_positive(config.finetune.backbone_lr_multiplier, "finetune.backbone_lr_multiplier")
    _check_transfer(config)
    _check_step_features(config)
    if config.plateau.enabled and config.schedule.name != "constant":
        raise UserError(
            "config.plateau.enabled sets the learning rate itself: use it with schedule.name='constant', "
            f"not {config.schedule.name!r}."
        )


def _check_step_features(config: ml_collections.ConfigDict) -> None:
    """EMA, gradient accumulation and the profiler window."""
    if not 0.0 <= config.ema.decay < 1.0:
        raise UserError(f"config.ema.decay must be in [0, 1) (0: no EMA), got {config.ema.decay!r}.")
    if config.optim.accum_steps < 1:
        raise UserError(
            f"config.optim.accum_steps must be >= 1 (1: no accumulation), got {config.optim.accum_steps}."
        )
    profile_window(config.profile_steps)


def profile_window(text: str) -> tuple[int, int] | None:
    """``'START:STOP'`` -> (START, STOP), the steps a profiler trace covers; '' -> None."""
    if not text:
        return None
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        start = stop = -1
    if not 0 <= start < stop:
        raise UserError(
            f"config.profile_steps = {text!r}: use 'START:STOP' with 0 <= START < STOP, e.g. '10:20'."
        )
    return start, stop


def _check_model_name(name: str) -> None:
    from spinal_jax.models import list_models

    if name not in list_models():
        raise UserError(
            f"config.model.name = {name!r} is not a registered model; choose one of "
            f"{', '.join(list_models())} (python -m spinal_jax.models prints them with their sizes)."
        )


def _check_transfer(config: ml_collections.ConfigDict) -> None:
    kwargs = config.model.kwargs
    if kwargs:
        from spinal_jax.models import create_model

        try:
            create_model(config.model.name, 2, head=config.model.head, **kwargs.to_dict())
        except TypeError as err:
            raise UserError(
                f"config.model.kwargs = {kwargs.to_dict()} does not fit model "
                f"{config.model.name!r} ({err}); use a model field or a head keyword (spinal_width, "
                "spinal_layers, spinal_splits, spinal_dropout, spinal_bn, spinal_activation, dropout_rate)."
            ) from err
    if not config.pretrained and config.finetune.mode == "full":
        return
    if config.pretrained and config.init_from:
        raise UserError(
            "config.pretrained and config.init_from are both set: use config.pretrained for converted "
            "ImageNet weights (fresh head), or config.init_from to warm-start from a spinal_jax run."
        )
    from spinal_jax.pretrained import SUPPORTED_ARCHS

    if config.model.name not in SUPPORTED_ARCHS:
        field = "pretrained" if config.pretrained else f"finetune.mode = {config.finetune.mode!r}"
        raise UserError(
            f"config.{field} needs a torchvision architecture in config.model.name (one of "
            f"{', '.join(SUPPORTED_ARCHS)}), got {config.model.name!r}."
        )


@dataclasses.dataclass(frozen=True)
class TokenGroup:
    """One group of ``configs/x.py:ARG`` tokens: each accepted token and the value it selects, and the
    value when the ARG names none of them. Build it with :func:`choice` or :func:`flag`."""

    tokens: Mapping[str, Any]
    default: Any

    def describe(self) -> str:
        """The accepted tokens, for error messages."""
        return " | ".join(self.tokens)


def choice(values: Sequence[str], default: str) -> TokenGroup:
    """Tokens selecting one of ``values`` (``default`` when absent); a value with ``/`` is also accepted
    with ``_`` in its place (``emnist_letters`` = ``emnist/letters``: no ``/`` in a shell-friendly ARG)."""
    if default not in values:
        raise ValueError(f"default {default!r} is not one of {tuple(values)}")
    tokens = {}
    for value in values:
        tokens[value] = value
        tokens.setdefault(value.replace("/", "_", 1), value)
    return TokenGroup(tokens, default)


def flag(token: str) -> TokenGroup:
    """A token that is either present (True) or absent (False), such as ``paper``."""
    return TokenGroup({token: True}, False)


# Compute dtype tokens of a config ARG (configs/mnist_vgg5_fast.py:bf16).
DTYPE_TOKENS = TokenGroup(
    {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}, "float32"
)


def parse_config_arg(arg: str | None, /, **groups: TokenGroup) -> dict[str, Any]:
    """The ``ARG`` of ``configs/x.py:ARG`` -> ``{group: value}``, one entry per keyword group.

    ``ARG`` is comma-separated tokens in any order, each from one of ``groups`` (a later token of a
    group replaces an earlier one); a group no token names keeps its default. An unknown token raises a
    :class:`UserError` naming it and every accepted token. Example::

        parse_config_arg("kmnist,bf16", dataset=choice(DATASETS, "mnist"), head=choice(HEADS, "spinal"),
                         dtype=DTYPE_TOKENS, paper=flag("paper"))
        -> {"dataset": "kmnist", "head": "spinal", "dtype": "bfloat16", "paper": False}
    """
    values = {name: group.default for name, group in groups.items()}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        name = next((name for name, group in groups.items() if token in group.tokens), None)
        if name is None:
            raise UserError(_unknown_token_message(token, groups))
        values[name] = groups[name].tokens[token]
    return values


def _unknown_token_message(token: str, groups: Mapping[str, TokenGroup]) -> str:
    if not groups:
        return (
            f"Config argument {token!r} is not accepted: this config takes no argument; override its fields "
            "with --config.FIELD=VALUE."
        )
    accepted = "; ".join(f"{name}: {group.describe()}" for name, group in groups.items())
    return (
        f"Config argument {token!r} is not accepted. Accepted tokens, comma-separated, one per group: "
        f"{accepted}."
    )


CONFIG_FLAG_HELP = "Training config file: configs/*.py[:ARG]; override fields with --config.FIELD=VALUE."


def define_config_flag(flag_values: Any, argv: Sequence[str]) -> None:
    """Define ``--config`` on the absl ``flag_values`` as ``train.py`` does: ml_collections' config file
    flag, locked (an override cannot add a field), its ``--config.FIELD=VALUE`` overrides read from ``argv``.
    """
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, CONFIG_FLAG_HELP, flag_values=flag_values, lock_config=True, sys_argv=list(argv)
    )


def parse_config_flags(flag_values: Any, argv: Sequence[str]) -> list[str]:
    """Parse ``argv`` into ``flag_values`` (see :func:`define_config_flag`); returns the arguments left over.

    What ml_collections and absl raise for a config file that does not exist or does not load (a bad
    ``ARG``), an override naming no field and a value of the wrong type becomes one :class:`UserError` line.
    """
    from absl import flags
    from ml_collections import config_flags

    try:
        rest = flag_values(list(argv))
    except (AttributeError, KeyError) as err:  # ml_collections' bare error for an override naming no field
        raise UserError(_unknown_field_message(err, argv)) from err
    except flags.Error as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:  # ml_collections appends the traceback
            raise UserError(f"--config: {lines[-1].split(': ', 1)[-1]}") from err
        raise UserError(lines[0]) from err
    path = config_flags.get_config_filename(flag_values["config"]) if flag_values["config"].present else ""
    if path and not os.path.isfile(path.split(":", 1)[0]):
        raise UserError(f"--config: no config file {path.split(':', 1)[0]!r} (configs/*.py[:ARG]).")
    return rest


def _unknown_field_message(err: LookupError | AttributeError, argv: Sequence[str]) -> str:
    key, *hint = str(err.args[0] if err.args else err).split("\n")
    key = key.strip("\"'")
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    field = next((o for o in overrides if key in o.split(".")[1:]), f"config.{key}")
    hint_text = "".join(f" {line.strip()}" for line in hint if line.strip())
    return (
        f"Unknown config field {field!r}: the config has no field {key!r} there.{hint_text} Check the "
        "spelling against the config file and docs/TRAINING.md (fields); new fields cannot be added from the "
        "command line."
    )


def load_config_file(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config ``train.py --config=SPEC OVERRIDES...`` trains: ``spec`` is ``configs/x.py[:ARG]``,
    ``overrides`` are ``--config.FIELD=VALUE`` arguments; errors as in :func:`parse_config_flags`."""
    from absl import flags

    argv = ["load_config_file", f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()
    define_config_flag(flag_values, argv)
    rest = parse_config_flags(flag_values, argv)
    if rest[1:]:
        raise UserError(f"Not a config override: {rest[1:]} (use --config.FIELD=VALUE).")
    return flag_values.config


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


# The MNIST-family data sets of the VGG-5 configs (configs/mnist_vgg5.py, configs/mnist_vgg5_fast.py).
MNIST_DATASETS = (
    "mnist", "qmnist", "fashion_mnist", "kmnist", "emnist/digits", "emnist/letters", "emnist/balanced",
)  # fmt: skip
TRANSFER_DATASETS = {
    "cifar10": "cifar10",
    "cifar10_jpeg": "image_folder",
    "cifar100": "cifar100",
    "stl10": "stl10",
}
# The head and fine-tuning mode tokens of every transfer config's ARG (configs/transfer_*.py).
TRANSFER_TOKENS = {"head": choice(HEADS, "spinal"), "mode": choice(FINETUNE_MODES, "full")}


def transfer_config(
    dataset: str,
    head: str,
    mode: str,
    *,
    spinal_width: int,
    batch_size: int,
    num_epochs: int,
    learning_rate: float = 1e-3,
    arch: str = "wide_resnet101_2",
) -> ml_collections.ConfigDict:
    """The reference's transfer recipe for an ImageNet-pretrained ``arch`` (docs/SPINALNET.md, Transfer
    learning).

    Every layer fine-tuned (``mode='full'``) with SGD momentum 0.9, no weight decay, ``learning_rate``
    x 0.1 every 7 epochs (StepLR(7, 0.1) stepped per epoch); images resized to 256 x 256, normalised
    with CIFAR-100 statistics (the reference's choice for every data set but MNIST, CINIC and
    hymenoptera); a spinal head (halves of the 2048 pooled features, k=4, ``spinal_width``, dropout
    0.5 and BatchNorm: the reference's "SpinalNet" TL head) or torchvision's Linear ``fc``. The
    weights come from ``--config.pretrained=PATH`` (docs/transfer_learning.md).

    Train augmentation: resize to 256, pad 4 + random crop + horizontal flip (the 'cifar' policy at
    256); the reference resizes to 272, rotates by up to 15 degrees and crops 256 at random, which
    the data pipeline has no policy for. Evaluation: resize to 256, as the reference.
    ``dataset='cifar10_jpeg'`` reads the JPEG copy of CIFAR-10 (the ``image_folder`` data set).
    """
    c = base_config()
    c.model.name = arch
    c.model.head = head
    c.model.kwargs = ml_collections.ConfigDict(
        {"spinal_width": spinal_width, "spinal_dropout": 0.5, "spinal_bn": True}
    )
    c.data = data_config(
        TRANSFER_DATASETS[dataset],
        batch_size=batch_size,
        eval_batch_size=100,
        image_size=256,
        augment_policy="cifar",
        mean=(0.507, 0.487, 0.441),
        std=(0.267, 0.256, 0.276),
    )
    c.num_epochs = num_epochs
    c.optim.name = "sgd"
    c.optim.learning_rate = learning_rate
    c.optim.momentum = 0.9
    c.schedule.name = "step"
    c.schedule.step_epochs = 7
    c.schedule.gamma = 0.1
    c.finetune.mode = mode
    c.log_every_steps = 100
    return c
