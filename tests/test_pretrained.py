"""torchvision -> Flax conversion: equal logits for every arch, head replacement, bad files.
(Fine-tuning converted weights with train_and_evaluate: tests/test_transfer_training.py.)

Needs the ``torch`` extra (torch, torchvision, safetensors); skipped without it.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

from spinal_jax import pretrained  # noqa: E402
from spinal_jax.convert import main as convert_main  # noqa: E402
from spinal_jax.errors import UserError  # noqa: E402
from spinal_jax.models import create_model  # noqa: E402
from spinal_jax.models.vgg import adaptive_avg_pool  # noqa: E402
from tests.training_helpers.torch_models import random_torchvision_model  # noqa: E402

ARCHS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
]


@functools.lru_cache(maxsize=2)
def torch_model(arch: str, num_classes: int = 1000, seed: int = 0):
    """A randomly initialised torchvision model in eval mode, with random BatchNorm statistics and affine."""
    return random_torchvision_model(arch, num_classes, seed)


def save(model, directory: pathlib.Path, fmt: str = "pth") -> pathlib.Path:
    path = directory / f"weights.{fmt}"
    if fmt == "safetensors":
        safetensors_torch.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def assert_trees_equal(got, want):
    """Same tree structure, shapes and dtypes, bit-identical leaves (chex's is slow on 100M-element trees)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def random_template(model, seed: int = 0, size: int = 32):
    """``model.init``'s tree (shapes from jax.eval_shape) with random values: a stand-in for a fresh
    initialisation, which op by op costs ~10 s of compilation per model."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)


def assert_logits_close(got, want):
    """Relative to the logits' scale: max |got - want| <= 1e-4 * max |want| (fp32)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def flax_logits(arch: str, variables, x_nchw: np.ndarray, num_classes: int = 1000) -> np.ndarray:
    """The Flax model's logits. VGG runs jitted (a few large ops); ResNets op by op, whose per-op
    compilations are shared by every ResNet of the module (faster than compiling each whole net)."""
    model = create_model(arch, num_classes, head="default")
    apply = jax.jit(model.apply) if arch.startswith("vgg") else model.apply
    return np.asarray(apply(variables, x_nchw.transpose(0, 2, 3, 1)))


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_torchvision(arch):
    """Every architecture: detected from its keys and shapes, converted, and the same logits (fp32).
    (Reading .pth / .safetensors files is arch-independent: test_files_read_as_the_state_dict.)"""
    model = torch_model(arch)
    state = state_dict_numpy(model)
    assert pretrained.detect_arch(state) == arch
    size, batch = (32, 1) if arch.startswith("vgg") else (64, 2 if arch in ("resnet18", "resnet34") else 1)
    x = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert_logits_close(flax_logits(arch, pretrained.convert_state_dict(state, arch), x), want)


def test_adaptive_avg_pool_against_torch():
    """The VGGs' pooling to 7x7 from an uneven 11x9 map: PyTorch's bins (the NumPy reference of the
    same bins, at more sizes: tests/test_imagenet_models.py)."""
    x = np.random.default_rng(1).normal(size=(2, 11, 9, 3)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), (7, 7))
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), (7, 7)))
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_files_read_as_the_state_dict(tmp_path):
    """.pth and .safetensors files convert to the same arrays as the in-memory state dict, bit for bit,
    and the architecture is detected from the file. (VGG files: test_raw_file_into_vgg_spinal_classifier,
    test_wrong_arch_message.)"""
    arch = "resnet18"
    model = torch_model(arch)
    want = pretrained.convert_state_dict(state_dict_numpy(model), arch)
    for fmt in ("pth", "safetensors"):
        variables, detected = pretrained.convert_file(save(model, tmp_path, fmt=fmt))
        assert detected == arch
        assert_trees_equal(variables, want)


def test_vgg_at_224_and_timm_layout_equal_torchvision():
    model = torch_model("vgg11_bn", num_classes=10)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    timm = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    timm["pre_logits.fc1.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    timm["pre_logits.fc1.bias"] = state["classifier.0.bias"]
    timm["pre_logits.fc2.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    timm["pre_logits.fc2.bias"] = state["classifier.3.bias"]
    timm["head.fc.weight"], timm["head.fc.bias"] = state["classifier.6.weight"], state["classifier.6.bias"]
    x = np.random.default_rng(2).normal(size=(1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    variables = pretrained.convert_state_dict(state, "vgg11_bn")
    assert_logits_close(flax_logits("vgg11_bn", variables, x, num_classes=10), want)
    assert_trees_equal(pretrained.convert_state_dict(timm, "vgg11_bn"), variables)


def _backbone_leaves(variables, head):
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    return {k: v for k, v in flat.items() if f"['{head}']" not in k}


@pytest.mark.parametrize("head_kind", ["spinal", "default"])
def test_cli_checkpoint_and_fresh_head(head_kind, tmp_path):
    arch = "resnet18"
    src = save(torch_model(arch), tmp_path)
    dst = tmp_path / "converted"
    assert convert_main([str(src), str(dst), "--arch", arch]) == 0
    converted, meta = pretrained.load_converted(dst)
    assert meta["arch"] == arch and meta["num_classes"] == 1000 and meta["source"] == "weights.pth"
    direct = pretrained.convert_file(src, arch)[0]
    assert_trees_equal(converted, direct)

    model = create_model(arch, 10, head=head_kind, **({"spinal_width": 64} if head_kind == "spinal" else {}))
    template = random_template(model, seed=3)
    variables = pretrained.init_from_pretrained(model, template, dst)
    head = pretrained.head_name(arch)
    # The head is the template's (fresh, 10 classes); the pretrained 1000-way classifier is gone.
    assert_trees_equal(variables["params"][head], template["params"][head])
    head_params = variables["params"][head]
    out_kernel = head_params["readout"]["kernel"] if head_kind == "spinal" else head_params["kernel"]
    assert out_kernel.shape[-1] == 10
    # Every backbone leaf is bit-identical to the converted one.
    got, want = _backbone_leaves(variables, head), _backbone_leaves(converted, head)
    assert got.keys() == want.keys() and len(got) > 0
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 10)  # the loaded tree fits the model (numerics: test_logits_equal_torchvision)


def test_raw_file_into_vgg_spinal_classifier(tmp_path):
    src = save(torch_model("vgg11_bn"), tmp_path, fmt="safetensors")
    model = create_model("vgg11_bn", 10, head="spinal", spinal_width=64)
    template = random_template(model)
    variables = pretrained.init_from_pretrained(model, template, src)
    assert "fc" not in variables["params"]
    assert_trees_equal(variables["params"]["classifier"], template["params"]["classifier"])
    assert_trees_equal(variables["batch_stats"]["classifier"], template["batch_stats"]["classifier"])
    want = torch_model("vgg11_bn").state_dict()["features.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(variables["params"]["features_0"]["kernel"]), want)


# ---------------------------------------------------------------------------------------------------
# Bad files and bad trees
# ---------------------------------------------------------------------------------------------------


def _resnet18_state():
    return {k: v.clone() for k, v in torch_model("resnet18").state_dict().items()}


def _convert(state, tmp_path, arch="resnet18"):
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return pretrained.convert_file(path, arch)


def test_missing_key_message(tmp_path):
    state = _resnet18_state()
    del state["layer3.1.bn2.running_var"]
    with pytest.raises(
        pretrained.StateDictMismatchError, match=r"missing keys \(1\): layer3\.1\.bn2\.running_var"
    ):
        _convert(state, tmp_path)


def test_unexpected_key_message(tmp_path):
    state = _resnet18_state()
    state["layer5.0.conv1.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        pretrained.StateDictMismatchError, match=r"unexpected keys \(1\): layer5\.0\.conv1\.weight"
    ):
        _convert(state, tmp_path)


def test_wrong_shape_message(tmp_path):
    state = _resnet18_state()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(
        pretrained.StateDictMismatchError,
        match=r"wrong shapes \(1\): layer2\.0\.conv1\.weight: file \(128, 64, 5, 5\), "
        r"expected \(128, 64, 3, 3\)",
    ):
        _convert(state, tmp_path)


@pytest.mark.parametrize(
    "file_arch,arch", [("resnet34", "resnet18"), ("vgg11_bn", "vgg13_bn"), ("resnet18", "vgg11_bn")]
)
def test_wrong_arch_message(file_arch, arch, tmp_path):
    with pytest.raises(pretrained.StateDictMismatchError, match=rf"does not fit '{arch}'") as info:
        _convert(torch_model(file_arch).state_dict(), tmp_path, arch)
    assert f"The file matches '{file_arch}'" in str(info.value)


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_arbitrary_object_refused(tmp_path):
    marker = tmp_path / "pwned"
    state = _resnet18_state()
    state["extra"] = _Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="Refusing to load .* never unpickles arbitrary objects"):
        pretrained.load_state_dict(path)
    assert not marker.exists()


def test_non_tensor_values_and_missing_file(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(
        ValueError, match=r"not a state dict of tensors: 1 value\(s\) are not tensors, e\.g\. epoch"
    ):
        pretrained.load_state_dict(path)
    with pytest.raises(FileNotFoundError, match="No weights file"):
        pretrained.load_state_dict(tmp_path / "nope.pth")


def test_cli_reports_errors(tmp_path, capsys):
    src = save(torch_model("resnet18"), tmp_path)
    assert convert_main([str(src), str(tmp_path / "out"), "--arch", "resnet50"]) == 2
    assert "does not fit 'resnet50'" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert convert_main([str(src), str(tmp_path / "exists")]) == 2
    assert "exists; choose a new directory" in capsys.readouterr().err


def _damaged_files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Real small weights files (a Linear's state dict), then damaged: random bytes, truncated, empty."""
    state = torch.nn.Linear(64, 32).state_dict()
    good_pth, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save(state, good_pth)
    safetensors_torch.save_file(state, str(good_st))
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    rng = np.random.default_rng(0)
    files = {}
    for kind, good in (("pth", good_pth), ("safetensors", good_st), ("legacy.pth", legacy)):
        data = good.read_bytes()
        for damage, content in (
            ("random", rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()),
            ("truncated", data[: len(data) // 2]),
            ("empty", b""),
        ):
            path = tmp_path / f"{damage}.{kind}"
            path.write_bytes(content)
            files[f"{damage}.{kind}"] = path
    return files


@pytest.mark.parametrize(
    "name, problem",
    [
        ("random.pth", "not a PyTorch weights file"),
        ("truncated.pth", "damaged or truncated"),
        ("empty.pth", "is empty"),
        ("truncated.legacy.pth", "damaged or truncated"),
        ("random.safetensors", "not a readable safetensors file"),
        ("truncated.safetensors", "not a readable safetensors file"),
        ("empty.safetensors", "is empty"),
        ("missing.pth", "No weights file"),
    ],
)
def test_cli_bad_weights_file_is_one_line_and_status_2(name, problem, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPINAL_TRACEBACK", raising=False)
    src = _damaged_files(tmp_path).get(name, tmp_path / name)
    assert convert_main([str(src), str(tmp_path / "out"), "--arch", "resnet18"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: ") and str(src) in err and problem in err, err
    assert "Fix:" in err, err
    assert not (tmp_path / "out").exists()


def test_damaged_files_raise_user_errors(tmp_path):
    for name, path in _damaged_files(tmp_path).items():
        with pytest.raises(UserError, match=re.escape(str(path))):
            pretrained.load_state_dict(path)
        assert name  # every damaged kind raised
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers that catch that
        pretrained.load_state_dict(tmp_path / "nope.safetensors")


def test_cli_subprocess_prints_no_traceback(tmp_path):
    src = _damaged_files(tmp_path)["truncated.pth"]
    env = {k: v for k, v in os.environ.items() if k != "SPINAL_TRACEBACK"}
    proc = subprocess.run(
        [sys.executable, "-m", "spinal_jax.convert", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**env, "JAX_PLATFORMS": "cpu"},
        cwd=pathlib.Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "damaged or truncated" in lines[0] and str(src) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_head_on_vgg_fc_is_impossible():
    converted = pretrained.convert_state_dict(
        {k: v.numpy() for k, v in torch_model("vgg11_bn").state_dict().items()}, "vgg11_bn"
    )
    template = jax.tree.map(np.zeros_like, converted)
    # The reference's bug: a spinal head on VGG's unused `.fc`, the stock classifier left in place.
    buggy = {
        **template,
        "params": {**template["params"], "fc": {"kernel": np.zeros((25088, 10), np.float32)}},
    }
    with pytest.raises(pretrained.StateDictMismatchError, match=r"left over\) \(1\): params/fc/kernel"):
        pretrained.load_pretrained_backbone(buggy, converted)
    # A model whose head is not named `classifier`.
    headless = {**template, "params": {k: v for k, v in template["params"].items() if k != "classifier"}}
    with pytest.raises(pretrained.StateDictMismatchError, match="no head subtree 'classifier'"):
        pretrained.load_pretrained_backbone(headless, converted)


def test_weights_of_another_family_refused(tmp_path):
    src = save(torch_model("resnet18"), tmp_path)
    model = create_model("vgg11_bn", 10, head="spinal")
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(
        pretrained.StateDictMismatchError, match="'resnet18' weights, which do not fit a VGG model"
    ):
        pretrained.init_from_pretrained(model, template, src)


def test_undetectable_file_and_arch_metadata_check(tmp_path):
    state = _resnet18_state()
    del state["fc.bias"]
    with pytest.raises(pretrained.StateDictMismatchError, match="matches none of resnet18, resnet34"):
        _convert(state, tmp_path, arch=None)
    src = save(torch_model("resnet18"), tmp_path)
    assert convert_main([str(src), str(tmp_path / "ckpt")]) == 0  # arch detected
    model = create_model("resnet34", 10, head="default")
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(
        pretrained.StateDictMismatchError, match="holds 'resnet18' weights, but the model is 'resnet34'"
    ):
        pretrained.init_from_pretrained(model, template, tmp_path / "ckpt", arch="resnet34")
