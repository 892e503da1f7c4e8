"""The same config and seed train the same model on 1 and 4 devices, dropout and augmentation included.

The step key is the same on every device; ``layers.Dropout`` draws the mask of the global batch and keeps
the device's rows, and device augmentation takes the keys of the examples' global batch positions
(``steps.example_keys``). The multi-device checks run this file as a script in a subprocess with 4 CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and jax's default ``threefry`` generator
(the one users get; the suite itself runs with ``rbg``, see conftest.py). Mixup and gradient accumulation
depend on the device count by design (docs/TRAINING.md) and are not used here.

What remains is rounding, and float32 training amplifies it. ``python tests/test_device_count.py measure
float32`` (or ``float64``; same ``XLA_FLAGS``) trains one model per family with BatchNorm or dropout
(``FAMILIES``: 50 SGD steps, momentum 0.9, lr 0.002, global batch 8 = 2 per device, augmentation) on 1
device, on 4 devices, on 1 device from initial parameters each moved one ulp, and on 4 devices with
per-device BatchNorm statistics and dropout masks (``bn_axis_name=None``, a real device-count
dependence), and prints each run's distance from the first: max |logit difference| / max |logit| on 16
held-out images, |loss difference|, parameter difference norm / norm. Measured on the 2-core CPU machine:

- float32, 4 devices / one ulp: MNIST CNN 2.7e-7 / 3.6e-7 (loss 1.9e-9 / 2.2e-9); VGG-11-BN (quarter
  width) 7.6e-5 / 1.7e-4; VGG-5 0.36 / 0.35, CIFAR CNN 0.15 / 0.11, CIFAR VGG 0.45 / 0.56, CIFAR ResNet
  0.26 / 0.25, ResNet 0.40 / 1.0 (losses up to 0.15 apart either way). The VGG-5 gap measured before
  (28x28 images: logits 0.48 apart, loss 1.88 against 1.78; 0.53 in an earlier run) is the same thing:
  one ulp on one device gives 0.47 (logits 2e-6 apart after 1 step, 1e-2 after 5, 0.24 after 10; 4
  devices: 2e-6, 0.14, 0.41). The cause is the ReLU: after a step the runs differ by about 1e-7, and a
  pre-activation within that of 0 falls on the other side in the other run (weights moved one ulp after
  4 steps: one input of -3.5e-9 in the third conv block in step 5), which changes the gradients of that
  block and the ones before it by 1e-3 to 1e-2 (the others by about 1e-5); training carries and
  multiplies such jumps. A smaller lr (down to 1e-5), a larger batch (32) or no augmentation leave VGG-5
  as far apart after 50 steps (0.36 to 0.97). The biases right before a BatchNorm have a true gradient
  of 0 (computed: 1e-8 to 3e-6 of noise against 0.1 to 7 for the kernels), so they differ completely
  between runs, but BatchNorm removes them from the outputs; the checks compare logits and loss, not
  those parameters.
- float64 (same setups; the model's logits are float32): 4 devices and one ulp both give bitwise equal
  logits and losses for every family, parameters 1.4e-17 to 1.3e-13 / 1.7e-16 to 6.6e-14 apart.
- per-device statistics and masks, float64: logits 0.44 to 3.6 of the largest, loss 5e-4 to 1.9 apart.

So ``test_50_steps_on_4_devices_train_the_1_device_model`` trains the MNIST CNN (dropout, no BatchNorm),
which float32 training leaves 3.6e-7 apart, in float32 and asserts logits within 1e-5 of the largest
logit and loss within 1e-6; every other family it trains in float64 and asserts logits within 1e-6
(about 10 float32 ulps, where the runs agree bitwise) and loss within 1e-6. A real device-count
dependence exceeds these by 500x or more. About 4.5 minutes (264 s) on the 2-core machine, one subprocess
per case.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import linen as nn

from spinal_jax import layers

REPO = Path(__file__).resolve().parents[1]
N = 4  # devices of the multi-device runs
AXIS = "batch"

# -- 50 training steps on 1 and on 4 devices, one model per family --------------------------------------
# 50 SGD steps (momentum 0.9) of global batch 8 (2 per device), then the logits of 16 held-out images.
STEPS, GLOBAL_BATCH, EVAL_BATCH, LR = 50, 8, 16, 0.002
# One model per family with BatchNorm or dropout: (head, overrides, image side). VGG-5 reads MNIST resized
# to 16x16; the VGGs are VGG-11-BN at a quarter of the width (``cfg``) and the ResNets have one block per
# stage (ResNet-10): the same layers at a fraction of the cost.
_QUARTER_VGG11 = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M")
FAMILIES: dict[str, tuple[str, dict, int]] = {
    "mnist_cnn": ("default", {}, 28),
    "vgg5": ("spinal", {}, 16),
    "cifar_cnn": ("spinal", {}, 32),
    "cifar_vgg11_bn": ("spinal", {"spinal_width": 64, "cfg": _QUARTER_VGG11}, 32),
    "cifar_resnet18": ("spinal", {"spinal_width": 64, "stage_sizes": (1, 1, 1, 1)}, 32),
    "resnet18": ("default", {"stage_sizes": (1, 1, 1, 1)}, 32),
    "vgg11_bn": ("default", {"small_vgg_head": True, "cfg": _QUARTER_VGG11}, 32),
}
# dtype: (max |logit difference| / max |logit|, |loss difference|) after 50 steps; see the module docstring.
TOLERANCES = {"float64": (1e-6, 1e-6), "float32": (1e-5, 1e-6)}


def _run(*case: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N}"
    env.pop("JAX_DEFAULT_PRNG_IMPL", None)
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *case],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- one process, one device --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, rate, broadcast_dims",
    [
        ((8, 37), 0.5, ()),
        ((6, 5, 5, 3), 0.1, ()),
        ((6, 5, 5, 3), 0.5, (1, 2)),
        ((3, 4), 1.0, ()),
        ((3, 4), 0.0, ()),
    ],
)
def test_dropout_without_axis_is_flax_dropout_bit_for_bit(shape, rate, broadcast_dims):
    x = jax.random.normal(jax.random.key(1), shape)
    for seed in range(3):
        rngs = {"dropout": jax.random.key(seed)}
        ours = layers.Dropout(rate, broadcast_dims).apply({}, x, deterministic=False, rngs=rngs)
        flax = nn.Dropout(rate, broadcast_dims).apply({}, x, deterministic=False, rngs=rngs)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax))
        explicit = layers.Dropout(rate, broadcast_dims).apply({}, x, False, jax.random.key(seed + 7))
        np.testing.assert_array_equal(
            np.asarray(explicit),
            np.asarray(nn.Dropout(rate, broadcast_dims).apply({}, x, False, jax.random.key(seed + 7))),
        )
    np.testing.assert_array_equal(
        np.asarray(layers.Dropout(rate).apply({}, x, deterministic=True)), np.asarray(x)
    )


def test_dropout_inside_a_model_draws_flax_masks():
    """Same module path, same ``make_rng`` key: a model's masks are those ``nn.Dropout`` drew there."""

    class Net(nn.Module):
        ours: bool

        @nn.compact
        def __call__(self, x):
            drop = layers.Dropout if self.ours else nn.Dropout
            return drop(0.3, name="dropout_0")(x, deterministic=False) + drop(0.6)(x, deterministic=False)

    x = jax.random.normal(jax.random.key(2), (5, 11))
    rngs = {"dropout": jax.random.key(3)}
    np.testing.assert_array_equal(
        np.asarray(Net(True).apply({}, x, rngs=rngs)), np.asarray(Net(False).apply({}, x, rngs=rngs))
    )


# -- 4 devices against 1 (subprocesses) ---------------------------------------------------------------------
def test_masks_and_augmentation_on_4_devices_equal_1_device_exactly():
    proc = _run("exact")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK exact" in proc.stdout, proc.stdout


# The MNIST CNN (no BatchNorm) in float32, the other families in float64 (see the module docstring).
CASES = [("mnist_cnn", "float32")] + [(name, "float64") for name in FAMILIES if name != "mnist_cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", CASES)
def test_50_steps_on_4_devices_train_the_1_device_model(name, dtype):
    """Logits and loss on 16 held-out images after 50 steps agree within ``TOLERANCES[dtype]`` (see the
    module docstring for the measured noise these bound)."""
    proc = _run("family", name, dtype)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK family {name} {dtype}" in proc.stdout, proc.stdout


# -- the subprocess (run as a script) -----------------------------------------------------------------------
MNIST_MEAN, MNIST_STD = np.array([0.1307], np.float32), np.array([0.3081], np.float32)


def _sgd(lr: float):
    import ml_collections

    from spinal_jax import optim

    cfg = dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8)
    return optim.create_optimizer(ml_collections.ConfigDict(cfg), lr)


def _train(model, image_shape, options, batches, devices: int | None, lr: float):
    """The state after one step per batch (global batches ``{'image', 'label'}``): pmapped over
    ``devices`` devices, or jitted without an axis when ``devices`` is None."""
    from flax import jax_utils

    from spinal_jax import steps

    state = steps.create_train_state(jax.random.PRNGKey(0), model, image_shape, _sgd(lr))
    if devices is None:
        step = jax.jit(lambda s, b: steps.train_step(s, b, options, axis_name=None))
    else:
        step = steps.pmap_train_step(options)
        state = jax_utils.replicate(state, jax.local_devices()[:devices])
    for batch in batches:
        if devices is not None:
            batch = jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch)
        state, _ = step(state, batch)
        # One step at a time: XLA:CPU runs the 4 devices' programs on a pool about the size of the
        # machine (2 cores); steps queued ahead can fill it with devices waiting in a collective while
        # the others of that collective find no thread (an all-reduce rendezvous time-out).
        yield jax.block_until_ready(state)
    return


def _exact() -> None:
    """Dropout masks and augmented images of the 4-device step are those of the 1-device step."""
    from training_helpers.mnist_idx import load_mnist

    from spinal_jax import steps
    from spinal_jax.data.augment_device import normalised_augment
    from spinal_jax.data.policies import POLICIES

    assert jax.local_device_count() == N, jax.devices()
    b = 3
    x = jax.random.normal(jax.random.key(0), (N * b, 6, 6, 4))
    rngs = {"dropout": jax.random.key(5)}
    for rate, dims in ((0.5, ()), (0.2, (1, 2)), (0.4, (0,))):
        whole = layers.Dropout(rate, dims).apply({}, x, deterministic=False, rngs=rngs)
        drop = functools.partial(
            layers.Dropout(rate, dims, axis_name=AXIS).apply, {}, deterministic=False, rngs=rngs
        )
        split = jax.pmap(drop, axis_name=AXIS)
        np.testing.assert_array_equal(np.asarray(split(x.reshape(N, b, 6, 6, 4))).reshape(x.shape), whole)
    keys = jax.pmap(lambda r: steps.example_keys(r, b, AXIS), axis_name=AXIS)(
        jax.numpy.stack([jax.random.PRNGKey(3)] * N)
    )
    np.testing.assert_array_equal(
        np.asarray(keys).reshape(N * b, -1), np.asarray(jax.random.split(jax.random.PRNGKey(3), N * b))
    )

    records: dict[str, dict[int, np.ndarray]] = {}

    def record(kind: str, index: jax.Array, value: jax.Array) -> None:
        records.setdefault(kind, {})[int(index)] = np.asarray(value)

    class Probe(nn.Module):
        """Shows the train step's augmented images and dropout masks through host callbacks."""

        bn_axis_name: str | None = None

        @nn.compact
        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            y = layers.Dropout(0.5, axis_name=self.bn_axis_name)(x, deterministic=not train)
            z = layers.Dropout(0.3, (1, 2), axis_name=self.bn_axis_name)(x, deterministic=not train)
            if train:
                index = jax.lax.axis_index(self.bn_axis_name) if self.bn_axis_name else 0
                for kind, value in (("image", x), ("dropout", y), ("dropout2d", z)):
                    jax.debug.callback(functools.partial(record, kind), index, value)
            return layers.Dense(10)((y + z).reshape(x.shape[0], -1))

    images, labels = load_mnist("train", 2 * N * b)
    batches = [{"image": images[i : i + N * b], "label": labels[i : i + N * b]} for i in (0, N * b)]
    augment = normalised_augment(POLICIES["mnist"].device, MNIST_MEAN, MNIST_STD, (28, 28, 1))
    options = steps.StepOptions(augment=augment)
    seen = {}
    for devices in (None, 1, N):
        model = Probe(bn_axis_name=None if devices is None else AXIS)
        seen[devices] = []
        for _ in _train(model, (28, 28, 1), options, batches, devices, 0.01):
            jax.effects_barrier()
            seen[devices].append({k: np.concatenate([v[d] for d in sorted(v)]) for k, v in records.items()})
            records.clear()
    for step, batch in enumerate(batches):
        one = seen[1][step]
        assert one["image"].shape == (N * b, 28, 28, 1)
        assert not np.allclose(one["image"], batch["image"])  # augmented
        assert 0.3 < (one["dropout"] == 0).mean() < 0.7
        for devices in (None, N):
            for kind in one:
                np.testing.assert_array_equal(
                    seen[devices][step][kind], one[kind], err_msg=f"{kind} {devices}"
                )
    print("OK exact")


def _cifar(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` CIFAR-10 test JPEGs of each class, shuffled: ``(n, 32, 32, 3)`` in [0, 1]
    and labels ``(n,)``."""
    from PIL import Image
    from training_helpers.mnist_idx import shared_dir

    images, labels, classes = [], [], {}
    with tarfile.open(shared_dir() / "data" / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz", "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            label = classes.setdefault(member.name.split("/")[-2], len(classes))
            if labels.count(label) < per_class:
                data = tar.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0)
                labels.append(label)
            if len(classes) == 10 and len(labels) == 10 * per_class:
                break
    order = np.random.default_rng(0).permutation(len(labels))
    return np.stack(images)[order], np.asarray(labels, np.int32)[order]


def _family_setup(name: str, dtype: str):
    """``(models, image shape, step options, train batches, eval images, eval labels)`` of ``name``;
    ``models`` maps the BatchNorm/dropout axis (``AXIS``, or None: per-device statistics and masks) to
    the model."""
    from training_helpers.mnist_idx import load_mnist

    from spinal_jax import steps
    from spinal_jax.data.augment_device import normalised_augment
    from spinal_jax.data.policies import POLICIES
    from spinal_jax.models import create_model
    from spinal_jax.models.heads import DefaultHeadConfig, HeadConfig

    head, overrides, side = FAMILIES[name]
    overrides = dict(overrides)
    if overrides.pop("small_vgg_head", False):
        overrides["head_cfg"] = HeadConfig(
            default=DefaultHeadConfig(
                hidden=(64, 64), dropout=0.5, dropout_at=(False, True, True), layout="torchvision_vgg"
            )
        )
    n = STEPS * GLOBAL_BATCH
    if name in ("mnist_cnn", "vgg5"):
        (x, y), (ex, ey) = load_mnist("train", n), load_mnist("test", EVAL_BATCH)
        if side != 28:
            x, ex = (np.asarray(jax.image.resize(a, (len(a), side, side, 1), "linear")) for a in (x, ex))
        mean, std, policy = MNIST_MEAN, MNIST_STD, "crop"
    else:
        images, labels = _cifar((n + EVAL_BATCH) // 10 + 1)
        (x, y), (ex, ey) = (
            (images[EVAL_BATCH:], labels[EVAL_BATCH:]),
            (images[:EVAL_BATCH], labels[:EVAL_BATCH]),
        )
        mean, std, policy = np.zeros(3, np.float32), np.ones(3, np.float32), "cifar"
    shape = x.shape[1:]
    options = steps.StepOptions(augment=normalised_augment(POLICIES[policy].device, mean, std, shape))
    batches = [
        {
            "image": x[i * GLOBAL_BATCH : (i + 1) * GLOBAL_BATCH],
            "label": y[i * GLOBAL_BATCH : (i + 1) * GLOBAL_BATCH],
        }
        for i in range(STEPS)
    ]
    dt = jax.numpy.dtype(dtype)
    models = {
        axis: create_model(
            name, num_classes=10, head=head, bn_axis_name=axis, dtype=dt, param_dtype=dt, **overrides
        )
        for axis in (AXIS, None)
    }
    return models, shape, options, batches, ex, ey


def _one_ulp(params):
    """``params`` with every element moved one ulp up or down (a fixed random choice per element)."""
    jnp = jax.numpy
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
    moved = [
        jnp.where(
            jax.random.bernoulli(k, 0.5, p.shape), jnp.nextafter(p, jnp.inf), jnp.nextafter(p, -jnp.inf)
        )
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(tree, moved)


def _family_runs(name: str, dtype: str, runs: dict[str, tuple[int, bool, str | None]]) -> dict[str, tuple]:
    """Train ``name`` for ``STEPS`` steps once per run ``{label: (devices, one_ulp, axis)}``: on that many
    devices, from the initial parameters moved one ulp (``_one_ulp``) or not, with BatchNorm statistics
    and dropout masks over ``axis`` (``AXIS``, or None: per device). Returns per run the logits of the eval
    images (the model's float32 logits as float64), their mean cross-entropy (in float64) and all
    trained parameters flattened (float64).

    Every run starts from one initial state; their steps compile together (two threads: XLA compiles
    without the GIL), then train one after the other, one step at a time (see ``_train``)."""
    import concurrent.futures

    from flax import jax_utils

    from spinal_jax import steps

    models, shape, options, batches, ex, ey = _family_setup(name, dtype)
    init = steps.create_train_state(jax.random.PRNGKey(0), models[AXIS], shape, _sgd(LR))
    # Flax keeps BatchNorm statistics in float32 whatever the parameters' type; in float64 they start as
    # float64 here, or the first update would change their type and compile the step again.
    init = init.replace(batch_stats=jax.tree.map(lambda a: a.astype(dtype), init.batch_stats))
    prepared = {}
    for label, (devices, one_ulp, axis) in runs.items():
        state = init.replace(
            apply_fn=models[axis].apply, params=_one_ulp(init.params) if one_ulp else init.params
        )
        state = steps.on_devices(jax_utils.replicate(state, jax.local_devices()[:devices]))
        split = [jax.tree.map(lambda x, d=devices: x.reshape(d, -1, *x.shape[1:]), b) for b in batches]
        prepared[label] = state, split, steps.pmap_train_step(options).lower(state, split[0])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        compiled = dict(zip(prepared, pool.map(lambda p: p[2].compile(), prepared.values()), strict=True))
    evaluate = jax.jit(models[AXIS].apply)
    out = {}
    for label, (state, split, _) in prepared.items():
        for batch in split:
            state, _ = compiled[label](state, batch)
            jax.block_until_ready(state)  # one step at a time, see _train
        variables = jax.tree.map(lambda a: a[0], {"params": state.params, "batch_stats": state.batch_stats})
        logits = np.asarray(evaluate(variables, ex), np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        loss = float(-log_probs[np.arange(len(ey)), ey].mean())
        params = np.concatenate(
            [np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(variables["params"])]
        )
        out[label] = logits, loss, params
    return out


def _gaps(a, b) -> tuple[float, float, float]:
    """(max logit difference / max |logit|, loss difference, parameter difference norm / norm)."""
    (la, lossa, pa), (lb, lossb, pb) = a, b
    return (
        float(np.abs(la - lb).max() / np.abs(la).max()),
        abs(lossa - lossb),
        float(np.linalg.norm(pa - pb) / np.linalg.norm(pa)),
    )


def _family(name: str, dtype: str) -> None:
    """4 devices train the 1-device model of ``name`` in ``dtype`` (see the module docstring)."""
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    assert jax.local_device_count() == N, jax.devices()
    out = _family_runs(name, dtype, {"1": (1, False, AXIS), "N": (N, False, AXIS)})
    logits, loss, params = _gaps(out["1"], out["N"])
    first = out["1"][1]
    print(f"{name} {dtype}: logits {logits:.1e}, loss {loss:.1e} (of {first:.4f}), parameters {params:.1e}")
    logits_rtol, loss_atol = TOLERANCES[dtype]
    assert logits <= logits_rtol, (name, dtype, logits)
    assert loss <= loss_atol, (name, dtype, loss)
    print(f"OK family {name} {dtype}")


def _measure(dtype: str, *names: str) -> None:
    """Print, per family, how far apart from the 1-device model are the models of 4 devices, of one
    device from initial parameters moved one ulp, and of 4 devices with per-device BatchNorm statistics
    and dropout masks (a real device-count dependence)."""
    import time

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    for name in names or FAMILIES:
        start = time.time()
        runs = {
            "1 device": (1, False, AXIS),
            f"{N} devices": (N, False, AXIS),
            "1 ulp": (1, True, AXIS),
            "per-device BN": (N, False, None),
        }
        out = _family_runs(name, dtype, runs)
        one = out.pop("1 device")
        text = "; ".join(
            f"{what}: logits {g[0]:.1e} loss {g[1]:.1e} params {g[2]:.1e}"
            for what, g in ((w, _gaps(one, r)) for w, r in out.items())
        )
        print(f"{dtype} {name:15s} loss {one[1]:.4f} | {text} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    case, *args = sys.argv[1:]
    if case == "family":
        _family(*args)
    elif case == "measure":
        _measure(*args)
    else:
        {"exact": _exact}[case]()
