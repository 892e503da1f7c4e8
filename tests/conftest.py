"""Session-wide test settings.

The suite runs with jax's ``rbg`` PRNG instead of the default ``threefry2x32``. Each ``jax.random`` call of
a new shape compiles its generator, and threefry's is an unrolled program that takes 0.3-0.5 s to compile
on the 2-core CI machine (3.2 s for one ``jax.jit(SpinalFC.init)``). Measured: test_spinal_fc.py 105 ->
58 s, no measurable change elsewhere. No test depends on the generator's values, only
on determinism and independence. Subprocesses inherit the setting through the environment;
``test_training_mnist`` runs ``train.py`` with the default generator, so the configuration users get is
exercised end to end.

The test processes compile with XLA:CPU's elemental emitters (``--xla_cpu_use_fusion_emitters=false`` in
``XLA_FLAGS``) instead of its MLIR fusion emitters, which build an MLIR context per fusion: about a third
less compile time for the thousands of small programs the model tests compile (op-by-op execution, the
ResNets' block programs). Measured on the 2-core CPU machine: the four model-test files 156.1 ->
141.4 s back to back, the 16 ImageNet ResNet cases in one process 79.8 -> 70.6 s. Same numbers within
every test's tolerance. The ``train.py`` and multi-device subprocesses set their own ``XLA_FLAGS`` and so
compile with XLA's defaults.

Every process of a test run (the pytest-xdist workers and the ``train.py`` / multi-process subprocesses
they start) shares one temporary folder, created by the first process and removed when it exits, with:

- ``tfds/`` (``$SPINAL_TFDS_DIR``): prepared data sets. MNIST is prepared once per run from
  ../shared/data (the first worker to need it prepares it, under ``prepare_dataset``'s file lock; the
  other waits), and no test reads or writes ``~/tensorflow_datasets``.
- ``xla_cache/``: a persistent XLA compilation cache. Each distinct program, down to the single
  operations of op-by-op execution, compiles once per run instead of once per process: a second process
  running ResNet-50 op by op spent 6.7 s instead of 19.9 s on its gradient.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ["JAX_DEFAULT_PRNG_IMPL"] = "rbg"

if "SPINAL_TEST_RUN_DIR" not in os.environ:  # the first process of the run; the others inherit it
    os.environ["SPINAL_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="spinal_jax_tests_")
    atexit.register(shutil.rmtree, os.environ["SPINAL_TEST_RUN_DIR"], ignore_errors=True)
RUN_DIR = Path(os.environ["SPINAL_TEST_RUN_DIR"])
os.environ["SPINAL_TFDS_DIR"] = str(RUN_DIR / "tfds")
XLA_CACHE_OPTIONS = {
    "jax_compilation_cache_dir": str(RUN_DIR / "xla_cache"),
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}
os.environ.update({name.upper(): str(value) for name, value in XLA_CACHE_OPTIONS.items()})
_FLAGS = os.environ.get("XLA_FLAGS", "").split()  # read once per process, when jax makes its CPU client
if "--xla_cpu_use_fusion_emitters=false" not in _FLAGS:
    os.environ["XLA_FLAGS"] = " ".join([*_FLAGS, "--xla_cpu_use_fusion_emitters=false"])

import jax  # noqa: E402  (after the environment variable, which jax reads on import)

jax.config.update("jax_default_prng_impl", "rbg")
for _name, _value in XLA_CACHE_OPTIONS.items():
    jax.config.update(_name, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tfds_dir() -> Path:
    """The test run's prepared-data folder (``$SPINAL_TFDS_DIR``)."""
    return Path(os.environ["SPINAL_TFDS_DIR"])
