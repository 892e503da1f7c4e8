"""Device-side (JAX) augmentation transforms of one float ``(H, W, C)`` image, vmapped and jitted inside
the train step.

Same semantics and parameter distributions as ``augment_host.py``: the random parameters are drawn per
image with ``jax.random``; images are resampled with dm-pix (rotation, crops, flips) or a homography
warp (perspective). ``policies.py`` composes them into the named policies. The pipeline's images are
normalised; :func:`normalised_augment` undoes the normalisation, so that fill value 0 is raw pixel value 0
(black, as in the reference), augments, and normalises again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from spinal_jax.data.augment_host import RATIO


def homography(src: jax.Array, dst: jax.Array) -> jax.Array:
    """3x3 matrix mapping points ``src`` to ``dst`` (both ``(4, 2)`` as (x, y))."""
    x, y = src[:, 0], src[:, 1]
    u, v = dst[:, 0], dst[:, 1]
    zeros, ones = jnp.zeros(4), jnp.ones(4)
    a = jnp.stack(
        [
            jnp.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1),
            jnp.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1),
        ],
        1,
    ).reshape(8, 8)
    coeffs = jnp.linalg.solve(a, jnp.stack([u, v], 1).reshape(8))
    return jnp.append(coeffs, 1.0).reshape(3, 3)


def warp(image: jax.Array, matrix: jax.Array, order: int) -> jax.Array:
    """Pull-resample ``image (H, W, C)``: output (x, y) reads input ``matrix @ (x, y, 1)``; fill 0."""
    h, w, c = image.shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # PIL's convention: pixel (x, y) is the point (x + 0.5, y + 0.5).
    src = jnp.einsum("ij,jhw->ihw", matrix, jnp.stack([xs + 0.5, ys + 0.5, jnp.ones_like(xs)]))
    sx, sy = src[0] / src[2] - 0.5, src[1] / src[2] - 0.5
    channel = lambda ch: jax.scipy.ndimage.map_coordinates(
        ch, [sy, sx], order=order, mode="constant", cval=0.0
    )
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)


def corners(h: int, w: int) -> jax.Array:
    """The 4 corner pixels ``(4, 2)`` as (x, y), clockwise from the top left."""
    return jnp.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], jnp.float32)


def perspective(image: jax.Array, endpoints: jax.Array) -> jax.Array:
    """Move the corners of ``image`` to ``endpoints`` ``(4, 2)``; bilinear, fill 0."""
    h, w, _ = image.shape
    return warp(image, homography(endpoints, corners(h, w)), order=1)


def perspective_endpoints(key: jax.Array, h: int, w: int, distortion: float) -> jax.Array:
    """torchvision ``RandomPerspective.get_params`` in JAX: 4 corner targets ``(4, 2)``."""
    dh, dw = int(distortion * (h // 2)), int(distortion * (w // 2))
    lo = jnp.array([[0, 0], [w - dw - 1, 0], [w - dw - 1, h - dh - 1], [0, h - dh - 1]])
    hi = jnp.array([[dw + 1, dh + 1], [w, dh + 1], [w, h], [dw + 1, h]])
    return jax.random.randint(key, (4, 2), lo, hi).astype(jnp.float32)


def random_perspective(
    key: jax.Array, image: jax.Array, distortion: float = 0.5, p: float = 0.5
) -> jax.Array:
    """``RandomPerspective(distortion, p)`` of one image ``(H, W, C)``; bilinear, fill 0."""
    k_apply, k_pts = jax.random.split(key)
    h, w, _ = image.shape
    warped = perspective(image, perspective_endpoints(k_pts, h, w, distortion))
    return jnp.where(jax.random.uniform(k_apply) < p, warped, image)


def rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
    """Counter-clockwise by ``angle`` degrees about the centre (as PIL ``Image.rotate``); nearest, fill 0."""
    h, w, _ = image.shape
    a = -jnp.deg2rad(angle)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    cos, sin = jnp.cos(a), jnp.sin(a)
    # Output (row, col) -> input (row, col): rotate about the centre by -angle in (x, y) with y down.
    matrix = jnp.array(
        [
            [cos, -sin, 0.0, cy - cos * cy + sin * cx],
            [sin, cos, 0.0, cx - sin * cy - cos * cx],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return pix.affine_transform(image, matrix, order=0, mode="constant", cval=0.0)


def random_rotation(key: jax.Array, image: jax.Array, degrees: float = 10.0) -> jax.Array:
    """``RandomRotation(degrees, fill=0)``: angle ~ U(-degrees, degrees); nearest neighbour."""
    return rotate(image, jax.random.uniform(key, (), minval=-degrees, maxval=degrees))


def resized_crop_params(
    key: jax.Array, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float] = RATIO
) -> jax.Array:
    """torchvision ``RandomResizedCrop.get_params``, 10 tries at once: ``(top, left, height, width)``."""
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = h * w * jax.random.uniform(k_area, (10,), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (10,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    cw, ch = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = jnp.argmax(ok)
    in_ratio = w / h
    fw, fh = (
        (w, round(w / ratio[0]))
        if in_ratio < ratio[0]
        else (round(h * ratio[1]), h)
        if in_ratio > ratio[1]
        else (w, h)
    )
    ch = jnp.where(ok.any(), ch[first], fh)
    cw = jnp.where(ok.any(), cw[first], fw)
    top = jnp.where(ok.any(), jnp.floor(jax.random.uniform(k_top) * (h - ch + 1)), (h - ch) // 2)
    left = jnp.where(ok.any(), jnp.floor(jax.random.uniform(k_left) * (w - cw + 1)), (w - cw) // 2)
    return jnp.stack([top, left, ch, cw])


def resized_crop(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """Crop ``box = (top, left, height, width)`` and resize it to ``(size, size)``, bilinear."""
    top, left, ch, cw = box
    sy, sx = ch / size, cw / size
    matrix = jnp.array(
        [
            [sy, 0.0, 0.0, top + 0.5 * sy - 0.5],
            [0.0, sx, 0.0, left + 0.5 * sx - 0.5],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return pix.affine_transform(image, matrix, order=1, mode="nearest")[:size, :size]


def random_resized_crop(key: jax.Array, image: jax.Array, scale: tuple[float, float]) -> jax.Array:
    """``RandomResizedCrop(H, scale)`` of one square image ``(H, H, C)``, back to its own size; bilinear."""
    h, w, _ = image.shape
    return resized_crop(image, resized_crop_params(key, h, w, scale), h)


def random_pad_crop(key: jax.Array, image: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pad by ``pad`` on each side, then crop back to ``(H, W, C)`` at a uniform offset."""
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return pix.random_crop(key, padded, image.shape)


def normalised_augment(
    transform: Callable[[jax.Array, jax.Array], jax.Array],
    mean: np.ndarray,
    std: np.ndarray,
    image_shape: tuple[int, int, int],
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A jittable ``fn(keys, images) -> images`` for normalised float images ``(..., H, W, C)`` and one
    key per image, ``keys (...)`` (typed keys; raw ``uint32`` keys have a trailing 2): each image is
    un-normalised to raw pixel scale, passed through ``transform(key, image)`` with its key, and
    normalised again (``mean``, ``std``: per channel, of [0, 1] images; ``(C,)``). The train step
    passes the keys of the examples' global batch positions (:func:`spinal_jax.steps.example_keys`),
    so an image's augmentation does not depend on the device count."""
    mean_j, std_j = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def device_augment(keys: jax.Array, images: jax.Array) -> jax.Array:
        lead = images.shape[: images.ndim - len(image_shape)]
        if keys.shape[: len(lead)] != lead or keys.ndim - len(lead) not in (0, 1):
            raise ValueError(
                f"Device augmentation takes one key per image: keys of shape {keys.shape} for images of "
                f"shape {images.shape}; give jax.random.split(key, {math.prod(lead)}).reshape{lead}."
            )
        flat = images.reshape(-1, *image_shape).astype(jnp.float32) * std_j + mean_j
        out = jax.vmap(transform)(keys.reshape(flat.shape[0], *keys.shape[len(lead) :]), flat)
        return ((out - mean_j) / std_j).reshape(images.shape).astype(images.dtype)

    return device_augment
