"""A site-packages view without tensorflow / keras / torch, as on the GPU machine (for subprocess tests)."""

from __future__ import annotations

import site
from pathlib import Path

HIDDEN_PREFIXES = ("tensorflow-", "tensorflow_cpu", "keras", "torch")


def tf_free_site(directory: Path) -> Path:
    """``directory`` filled with links to every site-packages entry except TensorFlow, Keras and torch;
    put it on ``PYTHONPATH`` of a ``python -S``-free subprocess whose own site-packages is not used."""
    directory.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if not entry.name.startswith(HIDDEN_PREFIXES) and entry.name != "tensorflow":
            (directory / entry.name).symlink_to(entry)
    return directory
