"""Host-side (numpy / PIL) augmentation transforms, one uint8 ``(H, W, C)`` image at a time.

Each mirrors the torchvision transform of the SpinalNet reference scripts, with torchvision's parameter
distributions (its ``get_params`` logic); ``augment_device.py`` has the JAX versions and ``policies.py``
composes both into the named policies. The random ones take a ``np.random.Generator``; the pipeline seeds
one per stream position (``pipeline.example_rng``), so they are deterministic per example and epoch.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE_FASHION = (0.95, 1.0)
SCALE_INCEPTION = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(image, dtype=np.uint8)
    return out[..., None] if channels == 1 and out.ndim == 2 else out


def perspective_endpoints(rng: np.random.Generator, h: int, w: int, distortion: float) -> np.ndarray:
    """torchvision ``RandomPerspective.get_params``: 4 corner targets ``(4, 2)`` as (x, y)."""
    dh, dw = int(distortion * (h // 2)), int(distortion * (w // 2))
    return np.array(
        [
            [rng.integers(0, dw + 1), rng.integers(0, dh + 1)],
            [rng.integers(w - dw - 1, w), rng.integers(0, dh + 1)],
            [rng.integers(w - dw - 1, w), rng.integers(h - dh - 1, h)],
            [rng.integers(0, dw + 1), rng.integers(h - dh - 1, h)],
        ],
        dtype=np.float64,
    )


def corners(h: int, w: int) -> np.ndarray:
    """The 4 corner pixels ``(4, 2)`` as (x, y), clockwise from the top left."""
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 8 coefficients ``(a, b, c, d, e, f, g, h)`` mapping points ``src`` to ``dst`` (both ``(4, 2)``)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows), dst.reshape(-1))


def perspective(image: np.ndarray, endpoints: np.ndarray) -> np.ndarray:
    """Move the corners of ``image`` to ``endpoints`` ``(4, 2)`` (x, y); bilinear, fill 0."""
    h, w, c = image.shape
    # PIL maps output coordinates to input ones: from the moved corners back to the original corners.
    coeffs = tuple(homography(endpoints, corners(h, w)))
    out = _to_pil(image).transform(
        (w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=0
    )
    return _from_pil(out, c)


def random_perspective(
    image: np.ndarray, rng: np.random.Generator, distortion: float = 0.5, p: float = 0.5
) -> np.ndarray:
    """``RandomPerspective(distortion, p)`` with bilinear sampling and fill 0."""
    if rng.random() >= p:
        return image
    h, w, _ = image.shape
    return perspective(image, perspective_endpoints(rng, h, w, distortion))


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees about the centre; nearest neighbour, fill 0."""
    out = _to_pil(image).rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
    return _from_pil(out, image.shape[-1])


def random_rotation(image: np.ndarray, rng: np.random.Generator, degrees: float = 10.0) -> np.ndarray:
    """``RandomRotation(degrees, fill=0)``: angle ~ U(-degrees, degrees)."""
    return rotate(image, rng.uniform(-degrees, degrees))


def resized_crop_params(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float] = RATIO
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: ``(top, left, height, width)``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(
    image: np.ndarray, rng: np.random.Generator, size: int, scale: tuple[float, float]
) -> np.ndarray:
    """``RandomResizedCrop(size, scale)`` with bilinear resizing."""
    h, w, c = image.shape
    top, left, ch, cw = resized_crop_params(rng, h, w, scale)
    out = _to_pil(image).resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    return _from_pil(out, c)


def random_pad_crop(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Zero-pad by ``pad`` on each side, then crop back to ``(H, W)`` at a uniform offset."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    return padded[dy : dy + h, dx : dx + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 0.5."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Eval-time ImageNet preprocessing: shorter side to ``size / crop_fraction``, then a central square."""
    h, w, c = image.shape
    short = round(size / crop_fraction)
    nh, nw = (
        (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    )
    top, left = (nh - size) // 2, (nw - size) // 2
    pil = _to_pil(image).resize((nw, nh), Image.Resampling.BILINEAR)
    return _from_pil(pil.crop((left, top, left + size, top + size)), c)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 ``(H, W, C)`` to ``(size, size, C)`` (returned as it is when already so)."""
    if image.shape[:2] == (size, size):
        return image
    return _from_pil(_to_pil(image).resize((size, size), Image.Resampling.BILINEAR), image.shape[-1])
