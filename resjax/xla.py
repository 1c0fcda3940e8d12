"""XLA-specific knobs, each with the measurement that justifies it (see docs/notes.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

# For functions that run once (initialisation), where compile time dominates run time: the
# threefry-heavy init graph of a ResNet-20 compiles in ~20 s on 2 CPU cores with XLA's default
# passes and ~2.5 s with these. The random numbers are the same (integer ops, exact).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def run_once(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)(*args)` compiled with FAST_COMPILE, for one-off functions."""
    return jax.jit(fn, **jit_kwargs).lower(*args).compile(FAST_COMPILE)(*args)
