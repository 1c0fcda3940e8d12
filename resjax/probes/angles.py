"""The angle from init: how far each filter has turned since step 0, whatever its norm did.

Under BatchNorm a conv is scale invariant (BN(c W * x) = BN(W * x) for c > 0, per output
channel), so `init_distance/` (||W_t - W_0|| / ||W_0||) mostly measures the weight-norm growth
that weight decay and the gradient's orthogonality to W set, not a change of the function. The
angle between an output filter's weights at t and at 0 is the part that matters there.

Metric names, in degrees (float32; 0 = the same direction, 90 = orthogonal):
- `init_angle/<layer>`: for each conv and dense layer (those holding a `kernel`; biases left
  out), the mean over its output filters (the kernel's last axis) of the angle between the
  filter at t and at step 0;
- `init_angle/global`: the mean over every filter of every such layer.
A filter that is zero at either step has no direction and is left out of the means (NaN for a
layer whose filters all are).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

PyTree = Any


def filter_angles(kernel: jax.Array, initial: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(angles in degrees, defined) of each output filter (last axis) of `kernel` against the
    same filter of `initial`; `defined` is False where either filter is zero (angle 0 there).

    2 atan2(||u - v||, ||u + v||) of the unit filters u, v (Kahan): accurate for small angles,
    where arccos of the cosine loses half of float32's digits.
    """
    a = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    b = initial.reshape(-1, initial.shape[-1]).astype(jnp.float32)
    norm_a, norm_b = jnp.linalg.norm(a, axis=0), jnp.linalg.norm(b, axis=0)
    defined = (norm_a > 0) & (norm_b > 0)
    u = a / jnp.where(defined, norm_a, 1.0)
    v = b / jnp.where(defined, norm_b, 1.0)
    angle = 2 * jnp.arctan2(jnp.linalg.norm(u - v, axis=0), jnp.linalg.norm(u + v, axis=0))
    return jnp.where(defined, jnp.degrees(angle), 0.0), defined


def init_angle(params: PyTree, initial: PyTree) -> dict[str, jax.Array]:
    """`init_angle/<layer>` and `init_angle/global` of `params` against `initial` (module
    docstring), layers sorted by name."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    start = flax.traverse_util.flatten_dict(flax.core.unfreeze(initial), sep='/')
    out, total, count = {}, 0.0, 0
    for path in sorted(p for p in flat if p.endswith('/kernel')):
        angles, defined = filter_angles(flat[path], start[path])
        n = jnp.sum(defined)
        out[f'init_angle/{path.rsplit("/", 1)[0]}'] = jnp.sum(angles) / n
        total, count = total + jnp.sum(angles), count + n
    out['init_angle/global'] = total / count
    return out
