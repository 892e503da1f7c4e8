"""Augmentation policies, in one table: each entry names a policy, its host implementation (numpy / PIL,
one example at a time, in the input pipeline's threads) and its device implementation (JAX, one image,
vmapped and jitted inside the train step), or says why it has none.

The transforms are those of the SpinalNet reference scripts (torchvision; docs/SPINALNET.md), with
torchvision's parameter distributions; the building blocks are in ``augment_host.py`` and
``augment_device.py``. Adding a policy is one function per form and one ``Policy`` entry (docs/DATA.md,
"Adding an augmentation policy").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import dm_pix as pix
import jax
import numpy as np

from spinal_jax.data import augment_device as D
from spinal_jax.data import augment_host as H
from spinal_jax.data.errors import DataConfigError

# (uint8 image (H, W, C), generator, output side in pixels) -> uint8 image (side, side, C)
HostFn = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]
# (key, float32 image (H, W, C) in raw pixel scale, 0 = black) -> float32 image (H, W, C)
DeviceFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Policy:
    """One augmentation policy.

    Attributes:
      name: the config value (``data.augment_policy``, ``DatasetSpec.policy``).
      description: the transforms, in torchvision's terms.
      host: the per-example host implementation.
      device: the per-image device implementation, or None where there is none.
      no_device: why there is no device implementation (required exactly when ``device`` is None).
      eval_center_crop: evaluation resizes the shorter side to ``size / 0.875`` and takes the central
        square (as ImageNet evaluation); otherwise it resizes to ``size`` x ``size``.
    """

    name: str
    description: str
    host: HostFn
    device: DeviceFn | None
    no_device: str = ""
    eval_center_crop: bool = False

    def __post_init__(self) -> None:
        if (self.device is None) != bool(self.no_device):
            raise TypeError(f"policy {self.name!r}: give a device implementation or say why there is none.")


def _host_chain(*transforms: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """A host policy: resize to ``size``, then each ``transform(image, rng)`` in turn."""

    def policy(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        image = H.resize(image, size)
        for transform in transforms:
            image = transform(image, rng)
        return image

    return policy


def _device_chain(*transforms: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[..., jax.Array]:
    """A device policy: ``transform_i(k_i, image)`` in turn, ``k_1, k_2 = split(key)`` (one or two)."""

    def policy(key: jax.Array, image: jax.Array) -> jax.Array:
        for k, transform in zip(jax.random.split(key), transforms, strict=False):
            image = transform(k, image)
        return image

    return policy


def _fashion_host(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    return H.random_resized_crop(H.random_rotation(H.resize(image, size), rng), rng, size, H.SCALE_FASHION)


def _fashion_crop_device(key: jax.Array, image: jax.Array) -> jax.Array:
    return D.random_resized_crop(key, image, H.SCALE_FASHION)


_mnist_host = _host_chain(H.random_perspective, H.random_rotation)
_mnist_device = _device_chain(D.random_perspective, D.random_rotation)
_fashion_device = _device_chain(D.random_rotation, _fashion_crop_device)
_cifar_host = _host_chain(H.random_pad_crop, H.random_flip)
_cifar_device = _device_chain(D.random_pad_crop, pix.random_flip_left_right)
_crop_host = _host_chain(H.random_pad_crop)
_crop_device = _device_chain(D.random_pad_crop)


def _inception_host(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    return H.random_flip(H.random_resized_crop(image, rng, size, H.SCALE_INCEPTION), rng)


def _none_host(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    del rng
    return H.resize(image, size)


def _none_device(key: jax.Array, image: jax.Array) -> jax.Array:
    del key
    return image


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "mnist",
            "RandomPerspective(distortion 0.5, p 0.5) + RandomRotation(10, fill 0)",
            _mnist_host,
            _mnist_device,
        ),
        Policy(
            "fashion",
            "RandomRotation(10, fill 0) + RandomResizedCrop(size, scale (0.95, 1))",
            _fashion_host,
            _fashion_device,
        ),
        Policy(
            "cifar", "pad 4 (zeros) + random crop back to size + horizontal flip", _cifar_host, _cifar_device
        ),
        Policy("crop", "pad 4 + random crop, no flip (digits: SVHN)", _crop_host, _crop_device),
        Policy(
            "inception",
            "RandomResizedCrop(size, scale (0.08, 1)) from the full-size image + horizontal flip",
            _inception_host,
            None,
            no_device="Inception crops need the full-size decoded image, which only the host has",
            eval_center_crop=True,
        ),
        Policy("none", "nothing (images resized to size only)", _none_host, _none_device),
    )
}


def get_policy(name: str) -> Policy:
    """The :class:`Policy` called ``name``; a ``DataConfigError`` lists the known ones."""
    if name not in POLICIES:
        raise DataConfigError(f"data.augment_policy: {name!r} is not '' or one of {tuple(POLICIES)}.")
    return POLICIES[name]


def device_policy(name: str) -> DeviceFn:
    """The device implementation of ``name``; a ``DataConfigError`` says why there is none and what to set."""
    policy = get_policy(name)
    if policy.device is None:
        have = tuple(p.name for p in POLICIES.values() if p.device is not None)
        raise DataConfigError(
            f"data.augment_on='device': policy {name!r} has no device form ({policy.no_device}); set "
            f"data.augment_on='host', or use one of {have}."
        )
    return policy.device


def make_device_augment(
    policy: str, mean: np.ndarray, std: np.ndarray, image_shape: tuple[int, int, int]
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A jittable ``fn(rng, images) -> images`` applying ``policy`` to normalised float images
    ``(..., H, W, C)`` (see :func:`augment_device.normalised_augment`)."""
    return D.normalised_augment(device_policy(policy), mean, std, image_shape)
