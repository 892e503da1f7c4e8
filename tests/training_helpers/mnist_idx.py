"""Read real MNIST straight from the idx.gz files in shared/data (independent of spinal_jax.data)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    return Path(os.environ.get("SPINAL_SHARED", REPO.parent / "shared"))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(split: str = "train", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 28, 28, 1) float32 normalised as the reference, labels (n,) int32)``."""
    prefix = "train" if split == "train" else "t10k"
    root = shared_dir() / "data" / "mnist"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n]
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n]
    images = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return images[..., None], labels.astype(np.int32)
