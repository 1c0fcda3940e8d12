"""XLA-specific knobs, each with the measurement that justifies it (see docs/notes.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# For functions that run once (initialisation), where compile time dominates run time: the
# threefry-heavy init graph of a ResNet-20 compiles in ~20 s on 2 CPU cores with XLA's default
# passes and ~2.5 s with these. The random numbers are the same (integer ops, exact).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

# For train steps, gradients and HVPs on the CPU backend (docs/notes.md, sessions 3-4): by
# default jaxlib 0.10 hands convolutions and matmuls to YNNPACK fusions; XLA's Eigen kernels
# are faster for these shapes on an AVX2 CPU (ResNet-20 gradient 1080-1207 -> 703-966 ms; the
# weight-gradient convolution of a 16->16 3x3 conv at 128x32x32 ~250 -> ~17 ms). YNNPACK
# stays on for reductions. (Session 3 also set the memory-optimised scheduler, for the tap
# matmuls that the 'stored' weight gradient replaced; without them it made no difference.)
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
