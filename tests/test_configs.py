"""Every file in configs/ loads through ml_collections' config_flags, validates and builds its model;
command-line overrides take effect; unknown fields, wrong types and bad values are rejected by name."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from spinal_jax import bench, build
from spinal_jax import config as config_lib
from spinal_jax.errors import UserError
from spinal_jax.models import get_spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))
# Classes per data set (the reference's values), to build models without preparing the data.
CLASSES = {
    "mnist": 10, "quickdraw": 6, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "stl10": 10,
    "image_folder": 10,
}  # fmt: skip


def load(spec: str, *overrides: str):
    argv = ["prog", f"--config={REPO / 'configs' / spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def test_every_config_file_is_tested():
    assert CONFIGS == [
        "cifar100_cnn.py", "cifar10_cnn.py", "cifar10_vgg_ema_mix.py", "cifar_resnet.py", "cifar_vgg19.py",
        "imagenet_resnet50.py",
        "imagenet_spinal.py", "mnist_cnn.py", "mnist_vgg5.py", "mnist_vgg5_fast.py", "quickdraw_vgg5.py",
        "transfer_cifar100_wrn.py", "transfer_cifar10_wrn.py", "transfer_stl10_wrn.py",
    ]  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("head", ["default", "spinal"])
def test_config_loads_and_builds_its_model(name, head):
    config = load(name, f"--config.model.head={head}")
    config_lib.validate_config(config)
    assert config.model.head == head
    classes = CLASSES[config.data.name]
    model = build.build_model(config, classes)
    shape = (2, *get_spec(config.model.name).input_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (2, classes) and logits.dtype == jnp.float32
    assert model.bn_axis_name == "batch"
    assert model.dtype == (jnp.bfloat16 if config.dtype == "bfloat16" else None)


def test_mnist_cnn_parameter_counts_match_the_reference_design():
    """docs/SPINALNET.md, MNIST CNN: 21,840 parameters with the default head, 13,818 with the spinal head
    (w=8, k=6)."""
    for arg, expected in (("mnist_cnn.py", 21_840), ("mnist_cnn.py:spinal", 13_818)):
        config = load(arg)
        model = build.build_model(config, 10)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))[
            "params"
        ]
        assert sum(int(jnp.prod(jnp.array(p.shape))) for p in jax.tree.leaves(params)) == expected


def test_config_arguments_select_dataset_and_head():
    config = load("mnist_vgg5.py:emnist_letters,default")
    assert (config.data.name, config.model.head) == ("emnist/letters", "default")
    config = load("cifar_resnet.py:cifar100")
    assert (config.model.name, config.data.name, config.plateau.power) == ("cifar_resnet34", "cifar100", 5.0)
    with pytest.raises(flags.IllegalFlagValueError, match="'svhn' is not accepted"):
        load("mnist_vgg5.py:svhn")


def test_overrides_take_effect():
    config = load(
        "imagenet_spinal.py",
        "--config.optim.learning_rate=0.2",
        "--config.data.batch_size=512",
        "--config.schedule.warmup_epochs=2",
        "--config.label_smoothing=0.1",
        "--config.dtype=float32",
    )
    assert config.optim.learning_rate == 0.2 and config.data.batch_size == 512
    assert (
        config.schedule.warmup_epochs == 2.0 and config.label_smoothing == 0.1 and config.dtype == "float32"
    )
    assert config.optim.nesterov and config.optim.momentum == 0.9 and config.optim.weight_decay == 1e-4


def test_unknown_field_and_wrong_type_are_rejected():
    with pytest.raises(AttributeError, match="lrr"):
        load("mnist_cnn.py", "--config.optim.lrr=0.1")
    with pytest.raises(flags.IllegalFlagValueError, match="num_epochs"):
        load("mnist_cnn.py", "--config.num_epochs=many")


def test_train_py_names_an_unknown_field_in_one_message(tmp_path):
    """The CLI turns ml_collections' bare AttributeError into one line naming the override."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "configs/mnist_cnn.py"),
            "--workdir",
            str(tmp_path / "w"),
            "--config.optim.lrr=0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2  # train.py's status for a one-line error
    assert "Unknown config field 'config.optim.lrr'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.optim.name=rmsprop", r"config.optim.name = 'rmsprop' is not valid: use one of \('sgd'"),
        ("--config.model.head=wide", r"config.model.head = 'wide' is not valid"),
        ("--config.label_smoothing=1.5", r"config.label_smoothing must be in \[0, 1\)"),
        ("--config.optim.learning_rate=0", r"config.optim.learning_rate must be > 0"),
        ("--config.schedule.name=step", r"plateau.enabled sets the learning rate itself"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(override, message):
    config = load("mnist_vgg5.py", override)
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def test_batch_that_does_not_divide_names_the_fix():
    assert build.per_device_batch_size(256, 4, 2) == 32
    with pytest.raises(
        ValueError, match=r"batch_size=100 .* multiple of the 8 devices .*--config.data.batch_size=96"
    ):
        build.per_device_batch_size(100, 4, 2)


def test_train_py_rejects_bad_config_on_the_command_line(tmp_path):
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "train.py", "--config=configs/mnist_cnn.py", f"--workdir={tmp_path}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    unknown = run("--config.optim.lrr=1")
    assert unknown.returncode != 0 and "lrr" in unknown.stderr
    bad = run("--config.optim.name=rmsprop")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "error: config.optim.name = 'rmsprop' is not valid: use one of ('sgd', 'adam', 'adamw')."
    )
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    ("spec", "classes", "expected"),
    [
        ("transfer_cifar10_wrn.py", 10, 84_170),  # SPINALNET.md: 84,010 + 2kw = 160 BatchNorm
        ("transfer_cifar10_wrn.py:cifar10_jpeg", 10, 84_170),
        ("transfer_stl10_wrn.py", 10, 2_910_218),  # SPINALNET.md: w=512 + BN
        ("transfer_cifar100_wrn.py", 100, 2_910_218 + 4 * 512 * 90 + 90),
    ],
)
def test_transfer_configs_build_the_reference_heads(spec, classes, expected):
    """The WRN-101-2 transfer recipes (docs/SPINALNET.md, Transfer learning): spinal head sizes,
    optimiser, StepLR(7, 0.1)."""
    config = load(spec)
    config_lib.validate_config(config)
    assert (config.model.name, config.model.head) == ("wide_resnet101_2", "spinal")
    assert config.finetune.mode == "full" and config.pretrained == ""
    assert (config.optim.name, config.optim.momentum, config.optim.weight_decay) == ("sgd", 0.9, 0.0)
    assert (config.schedule.name, config.schedule.step_epochs, config.schedule.gamma) == ("step", 7, 0.1)
    assert config.data.image_size == 256 and tuple(config.data.mean) == (0.507, 0.487, 0.441)
    model = build.build_model(config, classes)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))["params"]
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params["fc"])) == expected
    assert "classifier" not in params


def test_transfer_config_arguments_and_overrides():
    config = load(
        "transfer_cifar10_wrn.py:cifar10_jpeg,default,linear_probe",
        "--config.pretrained=/weights/wrn101",
        "--config.model.kwargs.spinal_width=64",
    )
    assert (config.data.name, config.model.head) == ("image_folder", "default")
    assert config.finetune.mode == "linear_probe"
    assert config.pretrained == "/weights/wrn101" and config.model.kwargs.spinal_width == 64
    config_lib.validate_config(config)
    with pytest.raises(flags.IllegalFlagValueError, match="'frozen' is not accepted.* mode: full"):
        load("transfer_stl10_wrn.py:frozen")
    with pytest.raises(AttributeError, match="spinal_widht"):
        load("transfer_stl10_wrn.py", "--config.model.kwargs.spinal_widht=3")


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [
        (
            "transfer_stl10_wrn.py",
            "--config.finetune.mode=frozen",
            r"config.finetune.mode = 'frozen' is not valid: use one of "
            r"\('full', 'linear_probe', 'separate_lr'\)",
        ),
        (
            "transfer_stl10_wrn.py",
            "--config.finetune.backbone_lr_multiplier=0",
            r"config.finetune.backbone_lr_multiplier must be > 0",
        ),
        (
            "mnist_cnn.py",
            "--config.pretrained=/w.pth",
            r"config.pretrained needs a torchvision architecture in config.model.name "
            r"\(one of resnet18.*got 'mnist_cnn'",
        ),
        (
            "mnist_cnn.py",
            "--config.finetune.mode=linear_probe",
            r"config.finetune.mode = 'linear_probe' needs a torchvision architecture",
        ),
        ("transfer_stl10_wrn.py", "--config.init_from=/run", None),
    ],
)
def test_bad_transfer_values_are_rejected_naming_the_field(spec, override, message):
    if message is None:  # init_from alone is fine; with pretrained it is refused
        config = load(spec, override, "--config.pretrained=/w")
        message = "config.pretrained and config.init_from are both set"
    else:
        config = load(spec, override)
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def config_module(name: str) -> types.ModuleType:
    """``configs/<name>`` imported by path, as ml_collections loads it."""
    spec = importlib.util.spec_from_file_location(f"config_{Path(name).stem}", REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def every_arg(groups: dict[str, config_lib.TokenGroup]) -> list[tuple[str, dict[str, object]]]:
    """Every ARG naming at most one token of each group (any accepted token, or none), with the values
    it selects."""
    options = [[(None, group.default), *group.tokens.items()] for group in groups.values()]
    args = []
    for combination in itertools.product(*options):
        tokens = [token for token, _ in combination if token is not None]
        args.append((",".join(tokens), dict(zip(groups, (value for _, value in combination), strict=True))))
    return args


@pytest.mark.parametrize("name", CONFIGS)
def test_every_accepted_arg_loads(name):
    """Every config file reads its ARG with parse_config_arg from its ARG_TOKENS, and every combination of
    accepted tokens loads through config_flags (as train.py reads it), validates and selects what it names."""
    groups = config_module(name).ARG_TOKENS
    args = every_arg(groups)
    assert len(args) == np.prod([len(g.tokens) + 1 for g in groups.values()])
    for arg, selected in args:
        config = load(f"{name}:{arg}" if arg else name)
        config_lib.validate_config(config)
        assert config.model.head == selected.get("head", config.model.head), arg
        assert config.dtype == selected.get("dtype", config.dtype), arg
        dataset = config_lib.TRANSFER_DATASETS.get(selected.get("dataset"), selected.get("dataset"))
        assert config.data.name == (dataset or config.data.name), arg
        if "paper" in selected:
            assert (config.plateau.monitor == "test") == selected["paper"], arg


@pytest.mark.parametrize("name", CONFIGS)
def test_bad_arg_token_names_every_accepted_token(name):
    module = config_module(name)
    with pytest.raises(UserError, match="'svhn' is not accepted") as raised:
        module.get_config("spinal,svhn" if "head" in module.ARG_TOKENS else "svhn")
    message = str(raised.value)
    for group_name, group in module.ARG_TOKENS.items():
        assert group_name in message and all(token in message for token in group.tokens), message
    if not module.ARG_TOKENS:
        assert "takes no argument" in message


def test_parse_config_arg():
    groups = {
        "dataset": config_lib.choice(("mnist", "emnist/letters"), "mnist"),
        "head": config_lib.choice(config_lib.HEADS, "spinal"),
        "dtype": config_lib.DTYPE_TOKENS,
        "paper": config_lib.flag("paper"),
    }
    parse = functools.partial(config_lib.parse_config_arg, **groups)
    defaults = {"dataset": "mnist", "head": "spinal", "dtype": "float32", "paper": False}
    assert parse(None) == parse("") == parse(" , ") == defaults
    assert parse(" emnist_letters , bf16,paper") == {
        **defaults,
        "dataset": "emnist/letters",
        "dtype": "bfloat16",
        "paper": True,
    }
    assert parse("default,emnist/letters,spinal") == {
        **defaults,
        "dataset": "emnist/letters",
    }  # the last wins
    with pytest.raises(
        UserError, match=r"'bf32' is not accepted.*dtype: bf16 \| bfloat16 \| fp32 \| float32; paper: paper"
    ):
        parse("mnist,bf32")
    with pytest.raises(ValueError, match="default 'cifar10' is not one of"):
        config_lib.choice(("mnist",), "cifar10")


BENCH_FLAGS = [
    ("mnist_vgg5_fast.py:kmnist,bf16", "--config.num_epochs=20", "--config.optim.learning_rate=0.003"),
    ("transfer_cifar10_wrn.py:cifar10_jpeg,linear_probe", "--config.model.kwargs.spinal_width=64"),
    ("imagenet_resnet50.py:spinal", "--config.data.batch_size=256", "--config.optim.nesterov=False"),
]


@pytest.mark.parametrize("spec_and_overrides", BENCH_FLAGS)
def test_bench_config_is_the_training_config_for_the_same_flags(spec_and_overrides):
    spec, *overrides = spec_and_overrides
    training_config = load(spec, *overrides)
    values = bench.parse_flags([f"--config={REPO / 'configs' / spec}", *overrides, "--modes=step,tta"])
    assert values.config == training_config
    assert [c.to_dict() for c in bench.workload_configs(values)] == [training_config.to_dict()]
    assert bench.load_config(str(REPO / "configs" / spec), *overrides) == training_config
    swept = bench.workload_configs(
        bench.parse_flags([f"--config={REPO / 'configs' / spec}", *overrides, "--heads=default,spinal"])
    )
    assert [c.model.head for c in swept] == ["default", "spinal"]
    for config in swept:  # the same config but for the head
        config.model.head = training_config.model.head
        assert config == training_config


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes=step,sweep"], "--modes: sweep is not a mode"),
        (["--config.optim.lrr=1"], "Unknown config field 'config.optim.lrr'"),
        (["--config.num_epochs=many"], "--config.num_epochs=many"),
        (["--heads=wide"], "config.model.head = 'wide' is not valid"),
        (["extra"], r"Unexpected arguments \['extra'\]"),
    ],
)
def test_bench_refuses_bad_flags_in_one_line(args, message):
    with pytest.raises(UserError, match=message):
        bench.parse_flags([f"--config={REPO / 'configs' / 'mnist_cnn.py'}", *args])


def test_bench_without_a_workload_says_what_to_give():
    with pytest.raises(UserError, match="Nothing to run: give a workload, --config="):
        bench.parse_flags([])


def test_bench_times_the_training_state_of_a_config(tmp_path):
    """One timed step of the MNIST CNN with the spinal head: the model and optimiser of its config."""
    records = bench.main(
        [
            f"--config={REPO / 'configs' / 'mnist_cnn.py'}:spinal",
            "--config.data.batch_size=8",
            "--steps=2",
            "--windows=1",
            f"--json={tmp_path / 'bench.json'}",
        ]
    )
    (record,) = records
    assert (record["workload"], record["mode"], record["batch"], record["params"]) == (
        "mnist_cnn:spinal",
        "step",
        8,
        13_818,
    )
    assert record["img_s_median"] > 0 and record["gflop_per_image"] > 0 and np.isfinite(record["final_loss"])
    assert record["overrides"] == {"data.batch_size": 8} and record["config"].endswith("mnist_cnn.py:spinal")
    assert json.loads((tmp_path / "bench.json").read_text())["records"] == records
