"""The real MNIST input pipeline (spinal_jax.data, prepared from ../shared/data/mnist) cut to the first
few hundred examples of each split, so that device-resident runs stay small on a CPU."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from spinal_jax.data import default_data_config
from spinal_jax.data.pipeline import InputPipeline


class SmallPipeline(InputPipeline):
    """:class:`InputPipeline` over the first ``sizes[split]`` examples of each split."""

    def __init__(self, config: Any, sizes: dict[str, int], **layout: int):
        self._sizes = dict(sizes)
        layout.setdefault("local_device_count", jax.local_device_count())
        layout.setdefault("process_index", jax.process_index())
        layout.setdefault("process_count", jax.process_count())
        super().__init__(config, **layout)

    def _split_indices(self):
        out = super()._split_indices()
        return {s: (name, ix[: self._sizes.get(s, len(ix))]) for s, (name, ix) in out.items()}


def mnist_data_config(**fields: Any) -> ml_collections.ConfigDict:
    """MNIST with device augmentation, device-resident, in the default tfds data dir (prepared once)."""
    c = default_data_config()
    c.name = "mnist"
    c.augment_on = "device"
    c.device_resident = True
    c.num_threads = 2
    for key, value in fields.items():
        c[key] = value
    return c
