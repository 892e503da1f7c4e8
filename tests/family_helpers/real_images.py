"""Small batches of real test images from ../shared/data, read without spinal_jax.data."""

from __future__ import annotations

import functools
import io
import tarfile

import numpy as np
from PIL import Image
from training_helpers.mnist_idx import load_mnist, shared_dir


def cifar_images(n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 test JPEGs as ``(n, 32, 32, 3)`` float32 in [0, 1]."""
    images = []
    path = shared_dir() / "data" / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz"
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0)
                if len(images) == n:
                    break
    return np.stack(images)


@functools.cache
def real_batch(channels: int, n: int = 2) -> np.ndarray:
    """``n`` real test images: MNIST ``(n, 28, 28, 1)`` normalised as the reference for one channel,
    CIFAR-10 ``(n, 32, 32, 3)`` in [0, 1] for three."""
    if channels not in (1, 3):
        raise ValueError(f"real_batch: no real images with {channels} channels (use 1 or 3).")
    images = load_mnist("test", n)[0] if channels == 1 else cifar_images(n)
    images.flags.writeable = False  # cached and shared by every caller
    return images
