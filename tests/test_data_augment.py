"""Host (PIL/numpy) and device (JAX) augmentations: same transforms, same parameter distributions.

Uses real MNIST digits read straight from ../shared/data/mnist (no tfds) and CIFAR-10 JPEGs from the
shared image-folder archive.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from spinal_jax.data import augment_device as D
from spinal_jax.data import augment_host as H
from spinal_jax.data.config import shared_dir, validate_data_config
from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.policies import POLICIES, Policy, make_device_augment

DATA = shared_dir() / "data"


def _need(path):
    if not path.exists():
        pytest.skip(f"real data file absent: {path}")


@pytest.fixture(scope="module")
def mnist():
    images, labels = (
        DATA / "mnist" / "t10k-images-idx3-ubyte.gz",
        DATA / "mnist" / "t10k-labels-idx1-ubyte.gz",
    )
    _need(images)
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


@pytest.fixture(scope="module")
def cifar():
    path = DATA / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz"
    _need(path)
    images = []
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images.append(
                    np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                )
            if len(images) == 300:
                break
    return np.stack(images)


def _device(fn, images, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(images))
    return np.asarray(jax.jit(jax.vmap(fn))(keys, jnp.asarray(images, jnp.float32)))


def _corr(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


# -- the same transform at the same parameters ------------------------------------------------------
@pytest.mark.parametrize("angle", [7.0, -9.0, 30.0])
def test_rotation_matches_pil(mnist, angle):
    x = mnist[0][:100]
    host = np.stack([H.rotate(i, angle) for i in x])
    dev = np.asarray(jax.vmap(lambda i: D.rotate(i, angle))(jnp.asarray(x, jnp.float32)))
    assert _corr(host, dev).mean() > 0.99
    wrong_way = np.asarray(jax.vmap(lambda i: D.rotate(i, -angle))(jnp.asarray(x, jnp.float32)))
    assert _corr(host, wrong_way).mean() < 0.95


def test_perspective_matches_pil(mnist):
    x = mnist[0][:100]
    rng = np.random.default_rng(0)
    for _ in range(3):
        end = H.perspective_endpoints(rng, 28, 28, 0.5)
        host = np.stack([H.perspective(i, end) for i in x]).astype(np.float32)
        dev = np.asarray(
            jax.vmap(lambda i, e=end: D.perspective(i, jnp.asarray(e, jnp.float32)))(
                jnp.asarray(x, jnp.float32)
            )
        )
        assert np.abs(host - dev).mean() < 0.5  # grey levels out of 255 (rounding only)
        assert np.abs(host - x).mean() > 5  # the transform did something


@pytest.mark.parametrize("box", [(1, 0, 27, 26), (2, 3, 20, 22), (0, 0, 28, 28)])
def test_resized_crop_matches_pil(mnist, box):
    x = mnist[0][:100]
    top, left, h, w = box
    host = np.stack(
        [
            np.asarray(
                Image.fromarray(i[..., 0]).resize((28, 28), Image.BILINEAR, (left, top, left + w, top + h))
            )
            for i in x
        ]
    )[..., None].astype(np.float32)
    dev = np.asarray(
        jax.vmap(lambda i: D.resized_crop(i, jnp.asarray(box, jnp.float32), 28))(jnp.asarray(x, jnp.float32))
    )
    assert np.abs(host - dev).mean() < 0.5


# -- the same parameter distributions -----------------------------------------------------------------
def _orientation(images):
    """Principal-axis angle (degrees) of each image's ink, from second moments."""
    img = images[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: img.shape[1], : img.shape[2]]
    m = img.sum((1, 2))
    cx, cy = (img * xs).sum((1, 2)) / m, (img * ys).sum((1, 2)) / m
    mu20 = (img * (xs - cx[:, None, None]) ** 2).sum((1, 2))
    mu02 = (img * (ys - cy[:, None, None]) ** 2).sum((1, 2))
    mu11 = (img * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum((1, 2))
    return np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))


def test_rotation_magnitude_distribution_agrees(mnist):
    ones = mnist[0][mnist[1] == 1][:600]  # elongated digits: a well-defined axis
    rng = np.random.default_rng(1)
    host = np.stack([H.random_rotation(i, rng) for i in ones])
    dev = _device(D.random_rotation, ones)
    base = _orientation(ones)
    wrap = lambda d: np.abs((d + 90.0) % 180.0 - 90.0)
    d_host, d_dev = wrap(_orientation(host) - base), wrap(_orientation(dev) - base)
    # |U(-10, 10)| has mean 5 degrees.
    assert 4.0 < d_host.mean() < 6.0 and 4.0 < d_dev.mean() < 6.0
    assert abs(d_host.mean() - d_dev.mean()) < 0.6
    assert d_host.max() < 12 and d_dev.max() < 12


def test_perspective_endpoint_distribution_agrees():
    rng = np.random.default_rng(2)
    host = np.stack([H.perspective_endpoints(rng, 28, 28, 0.5) for _ in range(4000)])
    dev = np.asarray(
        jax.vmap(lambda k: D.perspective_endpoints(k, 28, 28, 0.5))(jax.random.split(jax.random.key(2), 4000))
    )
    assert set(np.unique(host).tolist()) == set(np.unique(dev).tolist())
    np.testing.assert_allclose(host.mean(0), dev.mean(0), atol=0.25)
    np.testing.assert_allclose(host.std(0), dev.std(0), atol=0.2)


def test_resized_crop_param_distribution_agrees():
    rng = np.random.default_rng(3)
    host = np.array([H.resized_crop_params(rng, 28, 28, H.SCALE_FASHION) for _ in range(4000)], np.float64)
    dev = np.asarray(
        jax.vmap(lambda k: D.resized_crop_params(k, 28, 28, H.SCALE_FASHION))(
            jax.random.split(jax.random.key(3), 4000)
        )
    )
    np.testing.assert_allclose(host.mean(0), dev.mean(0), atol=0.1)
    np.testing.assert_allclose(host.std(0), dev.std(0), atol=0.1)
    assert (dev[:, 2] * dev[:, 3]).min() >= 0.95 * 784 - 28 and dev[:, 2:].max() <= 28


@pytest.mark.parametrize("policy", ["mnist", "fashion", "cifar", "crop"])
def test_policies_agree_in_distribution(mnist, cifar, policy):
    images = cifar if policy in ("cifar", "crop") else mnist[0][:1000]
    size = images.shape[1]
    rng = np.random.default_rng(4)
    host = np.stack([POLICIES[policy].host(i, rng, size) for i in images])
    dev = _device(POLICIES[policy].device, images)
    assert host.shape == dev.shape == images.shape and host.dtype == np.uint8
    c_host, c_dev = _corr(images, host), _corr(images, dev)
    assert c_host.mean() < 0.97  # augmentation changes images
    # Means agree within 3 standard errors of their difference.
    tol = 3 * np.sqrt(c_host.var() / len(c_host) + c_dev.var() / len(c_dev))
    assert abs(c_host.mean() - c_dev.mean()) < tol, (c_host.mean(), c_dev.mean(), tol)


def test_cifar_flip_and_shift_distribution(cifar):
    rng = np.random.default_rng(5)
    host = np.stack([POLICIES["cifar"].host(i, rng, 32) for i in cifar])
    dev = _device(POLICIES["cifar"].device, cifar).astype(np.uint8)

    def recover(src, out):
        padded = np.pad(src, ((4, 4), (4, 4), (0, 0)))
        for flip in (False, True):
            for dy in range(9):
                for dx in range(9):
                    crop = padded[dy : dy + 32, dx : dx + 32]
                    if np.array_equal(crop[:, ::-1] if flip else crop, out):
                        return flip, dy, dx
        raise AssertionError("output is not a flipped/unflipped pad-4 crop of its input")

    stats = {}
    for name, outs in (("host", host), ("device", dev)):
        params = np.array([recover(s, o) for s, o in zip(cifar, outs, strict=True)], np.float64)
        stats[name] = params.mean(0)
    # flip rate 0.5, offsets uniform on 0..8 (mean 4); 300 samples.
    for name in stats:
        assert abs(stats[name][0] - 0.5) < 0.1 and np.all(np.abs(stats[name][1:] - 4) < 0.5), stats


def test_device_augment_is_jittable_and_keeps_normalisation():
    mean, std = np.array([0.1307], np.float32), np.array([0.3081], np.float32)
    fn = jax.jit(make_device_augment("mnist", mean, std, (28, 28, 1)))
    zeros_raw = np.full((2, 3, 28, 28, 1), -0.1307 / 0.3081, np.float32)  # all-background images
    keys = jax.random.split(jax.random.key(0), 6).reshape(2, 3)  # one key per image
    out = fn(keys, jnp.asarray(zeros_raw))
    assert out.shape == zeros_raw.shape and out.dtype == jnp.float32
    # Fill value is raw pixel 0, i.e. the normalised background: a blank image stays blank.
    np.testing.assert_allclose(np.asarray(out), zeros_raw, atol=1e-6)
    with pytest.raises(ValueError, match="one key per image"):
        fn(jax.random.key(0), jnp.asarray(zeros_raw))
    with pytest.raises(DataConfigError, match="augment_on='host'"):
        make_device_augment("inception", mean, std, (224, 224, 3))


def test_inception_policy_and_eval_crop_shapes(cifar):
    big = np.stack([np.asarray(Image.fromarray(i).resize((300, 240), Image.BICUBIC)) for i in cifar[:20]])
    rng = np.random.default_rng(6)
    out = np.stack([POLICIES["inception"].host(i, rng, 224) for i in big])
    assert out.shape == (20, 224, 224, 3) and out.dtype == np.uint8
    boxes = np.array([H.resized_crop_params(rng, 240, 300, H.SCALE_INCEPTION) for _ in range(2000)])
    areas = boxes[:, 2] * boxes[:, 3] / (240 * 300)
    assert areas.min() >= 0.07 and areas.max() <= 1.0 and 0.4 < areas.mean() < 0.65  # E[U(0.08, 1)] = 0.54
    center = H.resize_center_crop(big[0], 224)  # shorter side 240 -> 256, then the central 224
    assert center.shape == (224, 224, 3)
    ref = np.asarray(Image.fromarray(big[0]).resize((320, 256), Image.BILINEAR))[16:240, 48:272]
    np.testing.assert_array_equal(center, ref)


# -- the policy registry ------------------------------------------------------------------------------
def test_registry_entries_are_complete():
    """Every policy has a host form, and a device form or the reason it has none; the data sets' reference
    policies are all registered."""
    from spinal_jax.data.catalog import DATASETS

    for name, policy in POLICIES.items():
        assert policy.name == name and callable(policy.host) and policy.description
        assert (policy.device is None) == bool(policy.no_device), name
    assert {spec.policy for spec in DATASETS.values()} <= set(POLICIES)
    with pytest.raises(TypeError, match="say why there is none"):
        Policy("half", "an entry without a device form or a reason", POLICIES["none"].host, None)


def test_policy_config_errors():
    """An unknown policy, or a host-only policy with augment_on='device', is one DataConfigError at
    config validation (before any data is read), naming the field and the accepted values."""
    with pytest.raises(DataConfigError, match=r"data\.augment_policy: 'mnsit' is not '' or one of"):
        validate_data_config({"augment_policy": "mnsit"})
    with pytest.raises(DataConfigError, match="policy 'inception' has no device form .*augment_on='host'"):
        validate_data_config({"name": "imagenet2012", "augment_on": "device"})
    # Not augmenting needs no device form.
    validate_data_config({"name": "imagenet2012", "augment_on": "device", "augment": "none"})


def test_host_policies_give_the_same_images_as_before(mnist, cifar):
    """The registry's host forms are the transforms composed in the order the reference applies them:
    rebuilt here from the primitives with the same generator, they give identical uint8 images."""
    compositions = {
        "mnist": lambda i, r, s: H.random_rotation(H.random_perspective(H.resize(i, s), r), r),
        "fashion": lambda i, r, s: H.random_resized_crop(H.random_rotation(i, r), r, s, H.SCALE_FASHION),
        "cifar": lambda i, r, s: H.random_flip(H.random_pad_crop(i, r), r),
        "crop": lambda i, r, s: H.random_pad_crop(i, r),
        "inception": lambda i, r, s: H.random_flip(H.random_resized_crop(i, r, s, H.SCALE_INCEPTION), r),
    }
    for name, compose in compositions.items():
        images = cifar[:20] if name in ("cifar", "crop", "inception") else mnist[0][:20]
        size = images.shape[1]
        a, b = np.random.default_rng(7), np.random.default_rng(7)
        for image in images:
            np.testing.assert_array_equal(POLICIES[name].host(image, a, size), compose(image, b, size))
