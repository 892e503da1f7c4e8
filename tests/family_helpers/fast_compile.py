"""``jax.jit`` compiled for fast compilation on XLA:CPU, for tests whose cost is mostly compiling.

LLVM at -O0 and XLA:CPU's elemental emitters instead of its MLIR fusion emitters (which build an
MLIRContext per fusion): a third to a half of the default compile time, slower code (measured on the
2-core CPU machine). Per program: nothing process-wide changes, and the numbers are
checked against op-by-op execution (LLVM's default optimisation level) wherever it is used.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def jit_fast(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``FAST_COMPILE``."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **jit_kwargs)
