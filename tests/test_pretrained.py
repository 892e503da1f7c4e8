"""torchvision -> Flax conversion: equal logits for every arch, head replacement, bad files, fine-tuning.

Needs the ``torch`` extra (torch, torchvision, safetensors); skipped without it.
"""

from __future__ import annotations

import functools
import io
import os
import pathlib
import tarfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

from spinal_jax import pretrained  # noqa: E402
from spinal_jax.convert import main as convert_main  # noqa: E402
from spinal_jax.finetune import finetune_transform  # noqa: E402
from spinal_jax.models import create_model  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SPINAL_SHARED", REPO.parent / "shared"))
CIFAR_TRAIN = SHARED / "data" / "cifar10_jpeg" / "cifar10_jpeg_train.tar.gz"
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
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
    return model


def save(model, directory: pathlib.Path, fmt: str = "pth") -> pathlib.Path:
    path = directory / f"weights.{fmt}"
    if fmt == "safetensors":
        safetensors_torch.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def assert_logits_close(got, want):
    """Relative to the logits' scale: max |got - want| <= 1e-4 * max |want| (fp32)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_torchvision(arch, tmp_path):
    model = torch_model(arch)
    path = save(model, tmp_path, fmt="safetensors" if ARCHS.index(arch) % 2 else "pth")
    size, batch = (32, 1) if arch.startswith("vgg") else (64, 2 if arch in ("resnet18", "resnet34") else 1)
    x = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    variables, detected = pretrained.convert_file(path, arch)
    assert detected == arch
    got = create_model(arch, 1000, head="default").apply(variables, x.transpose(0, 2, 3, 1))
    assert_logits_close(got, want)


def test_arch_detected_from_file(tmp_path):
    path = save(torch_model("resnet18"), tmp_path)
    assert pretrained.convert_file(path)[1] == "resnet18"


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
    got = create_model("vgg11_bn", 10, head="default").apply(variables, x.transpose(0, 2, 3, 1))
    assert_logits_close(got, want)
    chex.assert_trees_all_equal(pretrained.convert_state_dict(timm, "vgg11_bn"), variables)


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
    chex.assert_trees_all_equal(converted, direct)

    model = create_model(arch, 10, head=head_kind, **({"spinal_width": 64} if head_kind == "spinal" else {}))
    template = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    variables = pretrained.init_from_pretrained(model, template, dst)
    head = pretrained.head_name(arch)
    # The head is the template's (fresh, 10 classes); the pretrained 1000-way classifier is gone.
    chex.assert_trees_all_equal(variables["params"][head], template["params"][head])
    head_params = variables["params"][head]
    out_kernel = head_params["readout"]["kernel"] if head_kind == "spinal" else head_params["kernel"]
    assert out_kernel.shape[-1] == 10
    # Every backbone leaf is bit-identical to the converted one.
    got, want = _backbone_leaves(variables, head), _backbone_leaves(converted, head)
    assert got.keys() == want.keys() and len(got) > 0
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    logits = model.apply(variables, jnp.zeros((2, 32, 32, 3)))
    chex.assert_shape(logits, (2, 10))


def test_raw_file_into_vgg_spinal_classifier(tmp_path):
    src = save(torch_model("vgg11_bn"), tmp_path, fmt="safetensors")
    model = create_model("vgg11_bn", 10, head="spinal", spinal_width=64)
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    variables = pretrained.init_from_pretrained(model, template, src)
    assert "fc" not in variables["params"]
    chex.assert_trees_all_equal(variables["params"]["classifier"], template["params"]["classifier"])
    chex.assert_trees_all_equal(variables["batch_stats"]["classifier"], template["batch_stats"]["classifier"])
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


# ---------------------------------------------------------------------------------------------------
# Fine-tuning on real CIFAR-10 JPEGs
# ---------------------------------------------------------------------------------------------------


def cifar_subset(per_class: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` train JPEGs of every class, resized to ``size``, scaled to [0, 1]."""
    from PIL import Image

    if not CIFAR_TRAIN.exists():
        pytest.skip(f"{CIFAR_TRAIN} not found; set SPINAL_SHARED to the shared data folder")
    images: dict[str, list[np.ndarray]] = {}
    with tarfile.open(CIFAR_TRAIN, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or not parts[-1].endswith(".jpg"):
                continue
            bucket = images.setdefault(parts[-2], [])
            if len(bucket) < per_class:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    bucket.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
            if len(images) == 10 and all(len(v) == per_class for v in images.values()):
                break
    classes = sorted(images)
    assert len(classes) == 10
    x = np.stack([im for c in classes for im in images[c]]).astype(np.float32) / 255.0
    y = np.repeat(np.arange(10), per_class)
    return x, y


def test_finetuning_steps_lower_loss(tmp_path):
    x, y = cifar_subset(per_class=10)
    assert x.shape == (100, 64, 64, 3)
    mean, std = np.array([0.507, 0.487, 0.441]), np.array([0.267, 0.256, 0.276])  # spec §2.7
    x = ((x - mean) / std).astype(np.float32)
    batch_x, batch_y = jnp.asarray(x[::2]), jnp.asarray(y[::2])  # 50 images, 5 per class

    model = create_model("resnet18", 10, head="spinal", spinal_width=64)
    template = model.init(jax.random.PRNGKey(0), batch_x[:1])
    variables = pretrained.init_from_pretrained(model, template, save(torch_model("resnet18"), tmp_path))
    tx = finetune_transform("full", optax.sgd(0.01, momentum=0.9), head="fc")
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    def loss_fn(params, stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, batch_x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch_y).mean(), updates["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    losses = []
    for _ in range(4):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    final = float(loss_fn(params, stats)[0])
    assert np.isfinite(losses).all()
    assert final < losses[0], losses + [final]
    # 'full' trains the backbone too (linear_probe / separate_lr: tests/test_finetune.py).
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params, variables["params"])
    assert all(jax.tree.leaves(changed))


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
