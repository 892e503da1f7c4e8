"""spinal_jax.mixup.mix: label mixing, CutMix box areas, identity at alpha 0, per-batch draws, the
distributions of λ (Kolmogorov-Smirnov bounds computed from the sample size) and jit / pmap on CPU."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from spinal_jax.mixup import draw_params, mix

REPO = Path(__file__).resolve().parents[1]

NUM_CLASSES = 7
# Kolmogorov-Smirnov: P(sup |F_n - F| > c / sqrt(n)) <= 2 exp(-2 c^2) (Dvoretzky-Kiefer-Wolfowitz-Massart);
# c for a false-alarm probability of 1e-4 at the fixed seeds used here.
KS_C = math.sqrt(math.log(2 / 1e-4) / 2)  # 2.23


def constant_images(batch: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Example ``i`` is the constant ``i + 1`` everywhere: a pixel's value names the image it came from."""
    values = np.arange(1, batch + 1, dtype=np.float32)
    return np.broadcast_to(values[:, None, None, None], (batch, height, width, channels)).copy()


def smoothed(labels: np.ndarray, smoothing: float) -> np.ndarray:
    """timm's ``one_hot(on = 1 - s + s/C, off = s/C)``, computed in float32 as the device does."""
    off = np.float32(smoothing / NUM_CLASSES)
    out = np.full((len(labels), NUM_CLASSES), off, np.float32)
    out[np.arange(len(labels)), labels] = np.float32(1 - smoothing) + off
    return out


def jit_mix(**options: object):
    """``mix`` jitted with static ``options`` (num_classes defaults to NUM_CLASSES)."""
    return jax.jit(functools.partial(mix, **{"num_classes": NUM_CLASSES, **options}))


def ks_bound(n: int) -> float:
    return KS_C / math.sqrt(n)


def binomial_bound(n: int, p: float) -> float:
    """Five standard deviations of a fraction of ``n`` Bernoulli(p) draws."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("alphas", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_targets_are_lambda_mixtures_of_smoothed_labels(mode, alphas):
    labels = np.array([0, 3, 6, 2, 2, 5, 1, 4], np.int32)
    images = constant_images(len(labels), 12, 10)
    mixed = jit_mix(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], label_smoothing=0.1, mode=mode)
    out = mixed(jax.random.PRNGKey(3), images, labels)
    lam = np.asarray(out.lam)
    assert lam.shape == (8,) and lam.dtype == np.float32 and np.all((lam >= 0) & (lam <= 1))
    y = smoothed(labels, 0.1)
    expected = lam[:, None] * y + (np.float32(1) - lam[:, None]) * y[::-1]
    # the device may fuse the product-sum (FMA): equal up to float32 rounding of values <= 1
    np.testing.assert_allclose(np.asarray(out.targets), expected, rtol=0, atol=2**-23)
    np.testing.assert_allclose(np.asarray(out.targets).sum(-1), 1.0, rtol=0, atol=1e-6)
    if alphas[1] == 0:  # Mixup only: the images are the same blend
        w = lam[:, None, None, None]
        np.testing.assert_allclose(np.asarray(out.images), images * w + images[::-1] * (1 - w), atol=1e-5)
        assert not np.asarray(out.cutmix).any()


@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("shape", [(32, 32), (28, 17), (7, 5)])
def test_cutmix_box_area_is_one_minus_lambda(mode, shape):
    """Counted: the pixels that came from the flipped image form one box of area (1 - λ)·H·W exactly
    (λ rounded to float32: a tolerance of H·W·2^-23), and every other pixel is the example's own."""
    height, width = shape
    batch = 64
    images = constant_images(batch, height, width)
    labels = np.arange(batch, dtype=np.int32) % NUM_CLASSES
    cutmix = jit_mix(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode)
    mixed = [cutmix(jax.random.PRNGKey(seed), images, labels) for seed in range(4)]
    partial_boxes = 0
    for out in mixed:
        got, lam = np.asarray(out.images), np.asarray(out.lam)
        assert np.asarray(out.cutmix).all()
        for i in range(batch):
            own, paired = float(i + 1), float(batch - i)
            from_pair = got[i, :, :, 0] == paired
            assert np.all(from_pair | (got[i, :, :, 0] == own)) and np.all(got[i] == got[i, :, :, :1])
            count = int(from_pair.sum())
            assert abs((1 - float(lam[i])) * height * width - count) <= height * width * 2**-23
            if count:
                rows, cols = np.nonzero(from_pair)
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert box == count  # one solid rectangle
                partial_boxes += count < height * width
        if mode == "batch":
            assert np.all(lam == lam[0])
    assert partial_boxes > 0  # not only empty or whole-image boxes


def test_alpha_zero_is_the_identity():
    images = np.random.default_rng(0).normal(size=(6, 9, 9, 3)).astype(np.float32)
    labels = np.array([1, 0, 6, 6, 2, 3], np.int32)
    for smoothing in (0.0, 0.2):
        identity = jit_mix(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=smoothing)
        out = identity(jax.random.PRNGKey(0), images, labels)
        np.testing.assert_array_equal(np.asarray(out.images), images)
        np.testing.assert_array_equal(np.asarray(out.lam), np.ones(6, np.float32))
        np.testing.assert_allclose(np.asarray(out.targets), smoothed(labels, smoothing), rtol=0, atol=1e-7)


def test_bfloat16_images_keep_their_dtype_and_float32_targets():
    images = constant_images(4, 5, 5).astype(jax.numpy.bfloat16)
    out = jit_mix(mixup_alpha=0.5, cutmix_alpha=0.0)(
        jax.random.PRNGKey(4), images, np.arange(4, dtype=np.int32)
    )
    assert out.images.dtype == jax.numpy.bfloat16 and out.targets.dtype == np.float32
    w = np.asarray(out.lam)[:, None, None, None]
    blend = np.asarray(images, np.float32) * w + np.asarray(images, np.float32)[::-1] * (1 - w)
    np.testing.assert_array_equal(np.asarray(out.images), np.asarray(blend.astype(jax.numpy.bfloat16)))


def test_prob_zero_leaves_the_batch_alone_and_prob_gates_per_example():
    images = constant_images(4096, 1, 1, 1)
    labels = np.zeros(4096, np.int32)
    none = jit_mix(mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.0)(jax.random.PRNGKey(1), images, labels)
    np.testing.assert_array_equal(np.asarray(none.images), images)
    assert np.all(np.asarray(none.lam) == 1)
    # Mixup only: on 1x1 images a CutMix box is empty (λ = 1) whatever was drawn
    half = jit_mix(mixup_alpha=0.5, cutmix_alpha=0.0, prob=0.5)(jax.random.PRNGKey(2), images, labels)
    unmixed = np.asarray(half.lam) == 1
    assert abs(unmixed.mean() - 0.5) < binomial_bound(4096, 0.5)
    np.testing.assert_array_equal(np.asarray(half.images)[unmixed], images[unmixed])


def test_batch_mode_draws_one_lambda_per_call():
    images = constant_images(16, 8, 8)
    labels = np.arange(16, dtype=np.int32) % NUM_CLASSES
    per_batch = jit_mix(mixup_alpha=1.0, cutmix_alpha=1.0, mode="batch")
    for seed in range(6):
        out = per_batch(jax.random.PRNGKey(seed), images, labels)
        lam, cutmix = np.asarray(out.lam), np.asarray(out.cutmix)
        assert np.all(lam == lam[0]) and np.all(cutmix == cutmix[0])
        if cutmix[0]:  # the same box in every example
            from_pair = np.asarray(out.images)[..., 0] == (16 - np.arange(16))[:, None, None]
            assert np.all(from_pair == from_pair[0])


def _lambdas_by_call(alpha: float, mode: str, n: int) -> np.ndarray:
    """λ of ``n`` examples: one batch of ``n`` (elem), or ``n`` batches of 2 (batch, first λ of each)."""
    if mode == "elem":
        images, labels = np.zeros((n, 1, 1, 1), np.float32), np.zeros(n, np.int32)
        return np.asarray(
            jit_mix(mixup_alpha=alpha, cutmix_alpha=0.0)(jax.random.PRNGKey(11), images, labels).lam
        )
    one = functools.partial(mix, num_classes=NUM_CLASSES, mixup_alpha=alpha, cutmix_alpha=0.0, mode="batch")
    keys = jax.random.split(jax.random.PRNGKey(12), n)
    images, labels = np.zeros((2, 1, 1, 1), np.float32), np.zeros(2, np.int32)
    return np.asarray(jax.vmap(lambda k: one(k, images, labels).lam[0])(keys))


@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambda_is_beta_distributed(mode, alpha):
    n = 4000
    lam = _lambdas_by_call(alpha, mode, n)
    statistic = stats.kstest(lam, stats.beta(alpha, alpha).cdf).statistic
    assert statistic < ks_bound(n), (statistic, ks_bound(n))


def test_switch_prob_and_each_kind_draws_its_own_beta():
    """Both kinds on: CutMix in a fraction switch_prob of the examples; the Mixup examples' λ follow
    Beta(mixup_alpha); CutMix examples' λ are the corrected box areas (checked in the box test)."""
    n, switch = 8000, 0.3
    images, labels = np.zeros((n, 1, 1, 1), np.float32), np.zeros(n, np.int32)
    out = jit_mix(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=switch)(
        jax.random.PRNGKey(5), images, labels
    )
    cutmix, lam = np.asarray(out.cutmix), np.asarray(out.lam)
    assert abs(cutmix.mean() - switch) < binomial_bound(n, switch)
    mixup_lam = lam[~cutmix]
    statistic = stats.kstest(mixup_lam, stats.beta(0.4, 0.4).cdf).statistic
    assert statistic < ks_bound(len(mixup_lam)), (statistic, ks_bound(len(mixup_lam)))


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_cutmix_draws_beta_before_the_box_correction(alpha):
    """The λ CutMix draws (before ``correct_lam`` moves it to the box area) follow Beta(α, α)."""
    n = 4000
    lam, cutmix = draw_params(jax.random.PRNGKey(9), n, 0.0, alpha, 0.5, 1.0)
    assert np.asarray(cutmix).all()
    statistic = stats.kstest(np.asarray(lam), stats.beta(alpha, alpha).cdf).statistic
    assert statistic < ks_bound(n), (statistic, ks_bound(n))


PMAP_SCRIPT = """
import functools, jax, numpy as np
from spinal_jax.mixup import mix
assert jax.local_device_count() == 2, jax.devices()
f = functools.partial(mix, num_classes=5, mixup_alpha=0.4, cutmix_alpha=1.0, mode="batch")
step = jax.pmap(lambda k, x, y: f(jax.random.fold_in(k, jax.lax.axis_index("b")), x, y), axis_name="b")
images = np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3, 1)
labels = np.array([[0, 1, 2, 3], [4, 3, 2, 1]], np.int32)
keys = jax.random.split(jax.random.PRNGKey(0), 2)
out = step(keys, images, labels)
assert out.images.shape == (2, 4, 3, 3, 1) and out.targets.shape == (2, 4, 5)
for d in range(2):
    single = jax.jit(f)(jax.random.fold_in(keys[d], d), images[d], labels[d])
    for got, want in zip(out, single):
        np.testing.assert_array_equal(np.asarray(got[d]), np.asarray(want))
print("ok")
"""


def test_runs_under_jit_and_pmap_on_two_cpu_devices():
    """In a process with 2 CPU devices: each device of the pmapped call (its key folded with the device
    index, as a train step does) gets exactly what jit gives for that key and shard."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run(
        [sys.executable, "-c", PMAP_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
