"""XLA-specific knobs, each with the measurement that justifies it (see docs/notes.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# For functions that run once (initialisation), where compile time dominates run time: the
# threefry-heavy init graph of a ResNet-20 compiles in ~20 s on 2 CPU cores with XLA's default
# passes and ~2.5 s with these. The random numbers are the same (integer ops, exact).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

# For train steps, gradients and HVPs on the CPU backend (docs/notes.md, session 3):
# - The scheduler: jaxlib 0.10's default XLA:CPU order runs independent ops concurrently; for
#   the matmul weight gradient (resjax/models/conv.py) that means all kh*kw contiguous tap
#   slices of a layer are copied first and multiplied later, each after it has left the
#   cache. The memory-optimised order multiplies each slice right after copying it: the
#   weight gradient of a 16->16 3x3 conv at 128x32x32 takes 35 ms instead of 73-88 ms.
# - YNNPACK only for reductions: by default jaxlib 0.10 hands convolutions and matmuls to
#   YNNPACK fusions; XLA's Eigen kernels are faster for these shapes on this AVX2 CPU
#   (ResNet-20 gradient 1080-1207 -> 703-966 ms; a (48 x 139k)(139k x 48) matmul 25 -> 8 ms).
CPU_STEP_OPTIONS = {
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE',
}


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
