"""Host input-pipeline throughput: ``python -m spinal_jax.data.throughput``.

Measures, on real data from ``<shared>/data``:
  * 28x28: Quick Draw bitmaps (PNG decode + MNIST-family reference augmentation + normalisation);
  * 224x224: JPEG decode + Inception crop to 224 + flip + normalisation, on 256x256 JPEGs made by upscaling
    CIFAR-10 test images (re-encoded at quality 90; the size, not the content, is what costs).
For each: one core running the per-example transform in a plain loop (images/s per core), and the full grain
train iterator with ``--threads`` reader threads (images/s wall, and images per CPU-second).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from spinal_jax.data.config import default_data_config, shared_dir
from spinal_jax.data.pipeline import InputPipeline, create_input_pipeline


def _make_jpeg_folder(root: Path, count: int, size: int = 256) -> None:
    """``{train,test}/<class>/*.jpg`` of ``size``x``size`` JPEGs made from CIFAR-10 test images."""
    with tarfile.open(shared_dir() / "data" / "cifar10_jpeg" / "cifar10_jpeg_test.tar.gz") as tar:
        n = 0
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            parts = Path(member.name).parts
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            img = img.resize((size, size), Image.Resampling.BICUBIC)
            split = "test" if n % 10 == 0 else "train"
            out = root / split / parts[-2] / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            img.save(out, quality=90)
            n += 1
            if n == count:
                return


def _per_core(pipe: InputPipeline, n: int) -> float:
    """Images/s of the per-example train transform plus normalisation, one thread."""
    split, indices = pipe.split_record_indices("train")
    source = pipe._source(split)
    records = [source[int(i)] for i in indices[: min(n, len(indices))]]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    done = 0
    while done < n:
        for rec in records[: n - done]:
            pipe.normalize(pipe._train_example(rec, rng)["image"])
            done += 1
    return done / (time.perf_counter() - start)


def _pipeline(pipe: InputPipeline, batches: int) -> tuple[float, float]:
    """(images/s wall, images per CPU-second) of the grain train iterator, after one warm-up batch."""
    it = pipe.train_iterator()
    next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    n = batches * pipe.global_batch_size
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def run(data_dir: Path, images: int, threads: int) -> list[str]:
    lines = []
    common = dict(data_dir=str(data_dir), batch_size=100, num_threads=threads, prefetch=max(8, threads))
    c = default_data_config()
    c.update(name="quickdraw", **common)
    small = create_input_pipeline(c, local_device_count=1, process_index=0, process_count=1)
    with tempfile.TemporaryDirectory() as tmp:
        _make_jpeg_folder(Path(tmp), 1100)
        c = default_data_config()
        c.update(
            name="image_folder",
            manual_dir=tmp,
            image_size=224,
            augment_policy="inception",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            **common,
        )
        big = create_input_pipeline(c, local_device_count=1, process_index=0, process_count=1)
        for label, pipe, n in (
            ("28x28 Quick Draw, PNG + perspective/rotation", small, images),
            ("224x224 JPEG decode + Inception crop + flip", big, max(200, images // 10)),
        ):
            per_core = _per_core(pipe, n)
            wall, per_cpu = _pipeline(pipe, max(2, n // 100))
            lines.append(
                f"{label}: {per_core:,.0f} img/s on one core; grain iterator ({threads} threads): "
                f"{wall:,.0f} img/s wall, {per_cpu:,.0f} img per CPU-second"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="", help="tfds data dir (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=5000, help="images timed for the 28x28 case")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="grain reader threads")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for line in run(Path(args.data_dir or tmp), args.images, args.threads):
            print(line)


if __name__ == "__main__":
    main()
