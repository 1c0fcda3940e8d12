"""XLA-specific knobs; why each helps is in docs/notes.md (XLA:CPU), the timings in
docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# For functions that run once (initialisation), where compile time dominates run time: XLA's
# LLVM passes dominate the compile of the threefry-heavy init graph and buy nothing for one
# call. The random numbers are the same (integer ops, exact).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

# For train steps, gradients and HVPs on the CPU backend: by default jaxlib 0.10 hands
# convolutions and matmuls to YNNPACK fusions, and XLA's Eigen kernels are faster for a
# ResNet's conv shapes, the weight-gradient convolutions above all (docs/notes.md, XLA:CPU).
# YNNPACK stays on for reductions.
CPU_STEP_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


def jit(fn: Callable[..., Any], **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)` with CPU_STEP_OPTIONS when the default backend is the CPU
    and `compiler_options` is not given (or None); `compiler_options={}` means jaxlib's
    defaults. For the functions that run every step: train/eval steps, gradients, HVPs."""
    if jit_kwargs.get('compiler_options') is None and jax.default_backend() == 'cpu':
        jit_kwargs['compiler_options'] = CPU_STEP_OPTIONS
    return jax.jit(fn, **jit_kwargs)


def run_once(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)(*args)` compiled with FAST_COMPILE, for one-off functions."""
    return jax.jit(fn, **jit_kwargs).lower(*args).compile(FAST_COMPILE)(*args)
