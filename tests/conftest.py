"""Session-wide test settings.

The suite runs with jax's ``rbg`` PRNG instead of the default ``threefry2x32``. Each ``jax.random`` call of
a new shape compiles its generator, and threefry's is an unrolled program that takes 0.3-0.5 s to compile
on the 2-core CI machine (3.2 s for one ``jax.jit(SpinalFC.init)``). Measured: test_spinal_fc.py 105 ->
58 s, no measurable change elsewhere (docs/perf_notes.md). No test depends on the generator's values, only
on determinism and independence. Subprocesses inherit the setting through the environment;
``test_training_mnist`` runs ``train.py`` with the default generator, so the configuration users get is
exercised end to end.

Prepared tfds data sets go to one folder per test session (``$SPINAL_TFDS_DIR``, inherited by the
``train.py`` subprocesses), so MNIST is prepared once per session from ../shared/data and no test reads
or writes ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["JAX_DEFAULT_PRNG_IMPL"] = "rbg"

import jax  # noqa: E402  (after the environment variable, which jax reads on import)

jax.config.update("jax_default_prng_impl", "rbg")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def tfds_dir(tmp_path_factory) -> Path:
    """The session's prepared-data folder, exported as ``$SPINAL_TFDS_DIR``."""
    path = tmp_path_factory.mktemp("tfds")
    os.environ["SPINAL_TFDS_DIR"] = str(path)
    return path
