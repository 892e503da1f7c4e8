"""XLA compile options for tests that compile a large graph once and run it once or twice.

LLVM's -O0 for XLA:CPU's generated kernels: the HLO (what is computed, and the fusion decisions) is the
same, only the machine code is less optimised, so compiling a deep ResNet's gradient takes about half the
time and running it twice as long, a good trade when it runs once. Training tests keep the defaults.
"""

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
