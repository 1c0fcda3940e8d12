"""A 2-D convolution whose weight gradient is a sum of matmuls, for XLA's CPU backend.

XLA lowers the weight gradient of a convolution (dL/dW) to another convolution whose "kernel"
is the whole activation map. With jaxlib 0.10's default CPU options that convolution runs in
YNNPACK and takes ~250 ms for a 16->16 3x3 conv on 128x32x32 inputs (~12 ms forward); in
Eigen (`resjax.xla.CPU_STEP_OPTIONS`) ~17 ms. Written as one matmul per kernel tap,
dL/dW[i, j] = sum_{n,h,w} x_pad[n, h*s + i, w*s + j, :]^T dy[n, h, w, :], with each tap's
input a contiguous row range of the flattened padded input (`_flat_taps`), it takes ~30 ms
per layer, but a whole deep ResNet's step is faster this way (ResNet-110: 6.9 vs 12.0 s).

`conv_general_dilated` below is a drop-in for `jax.lax.conv_general_dilated` (Flax's
`nn.Conv(conv_general_dilated=...)`). The forward pass and dL/dx are XLA's own; only dL/dW
changes. It is a `jax.custom_jvp`, not a `custom_vjp`, so it composes with every transform
resjax uses, forward-over-reverse HVPs included: the tangent in W is written as the matmuls,
and JAX's transpose of those matmuls is the weight gradient.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')

WEIGHT_GRADS = ('auto', 'xla', 'matmul')


def _materialise(x: jax.Array) -> jax.Array:
    """`x`, computed into a buffer once. Without this, XLA:CPU fuses x's whole elementwise
    producer chain (relu(bn(conv) + shortcut) back through the blocks) into each of the kh*kw
    slices that read it; the fused computations grow with depth and ResNet-110's train step
    took > 5 minutes to compile (37 s with XLA's own weight gradient). A conditional on a
    traced predicate is a fusion boundary that XLA:CPU keeps (`lax.optimization_barrier` is
    dropped by its pipeline); both branches are the identity.
    """
    first = x.reshape(-1)[0]
    return lax.cond(first == first, lambda v: v, lambda v: v, x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, strides: tuple, padding: tuple, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, precision=precision
    )


@_conv.defjvp
def _conv_jvp(strides, padding, precision, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _conv(x, w, strides, padding, precision)
    # Linear in dx: XLA's convolution (its transpose is XLA's fast input gradient).
    dy = _conv(dx, w, strides, padding, precision)
    # Linear in dw: one matmul per kernel tap (its transpose is the fast weight gradient).
    return y, dy + _tap_matmuls(x, dw, strides, padding, precision).astype(dy.dtype)


def _tap_matmuls(
    x: jax.Array, w: jax.Array, strides: tuple, padding: tuple, precision: Any
) -> jax.Array:
    """The convolution of x with w as one matmul per kernel tap, for any stride.

    A stride-s convolution is the sum over the s*s phases (p, q) of the padded input,
    x_pad[:, p::s, q::s], of stride-1 convolutions with the kernel taps w[p::s, q::s]
    (its polyphase form); each of those is `_flat_taps`.
    """
    (kh, kw), (sh, sw) = w.shape[:2], strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    if (sh, sw) == (1, 1):
        return _flat_taps(xp, w, precision)
    return sum(
        _flat_taps(xp[:, p::sh, q::sw], w[p::sh, q::sw], precision)[:, :ho, :wo]
        for p in range(min(sh, kh))
        for q in range(min(sw, kw))
    )


def _flat_taps(xp: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
    """The stride-1, unpadded ('VALID') convolution of xp with w as kh*kw matmuls of
    *contiguous* row ranges.

    With xp flattened to one row of C values per pixel (n, h, w), kernel tap (i, j) reads
    the row i*W + j further on, for every output pixel at once: one contiguous slice of
    the flat array, which XLA copies at memory speed (a strided 4-D slice costs ~5x more).
    Rows that run off an image's right or bottom edge compute garbage that the final slice
    drops. Transposed (the weight gradient), each tap is one (C, rows) x (rows, C_out)
    matmul of a row range against the zero-padded output gradient.
    """
    n, hp, wp, c = xp.shape
    kh, kw = w.shape[:2]
    rows = n * hp * wp
    flat = _materialise(jnp.pad(xp.reshape(rows, c), ((0, (kh - 1) * wp + kw - 1), (0, 0))))
    out = sum(
        jnp.matmul(flat[i * wp + j : i * wp + j + rows], w[i, j], precision=precision)
        for i in range(kh)
        for j in range(kw)
    )
    return out.reshape(n, hp, wp, -1)[:, : hp - kh + 1, : wp - kw + 1]


def use_matmul_weight_grad(weight_grad: str) -> bool:
    """Whether `weight_grad` ('auto', 'xla' or 'matmul') picks the matmul form: 'auto' does on
    the CPU backend (train step with resjax.xla.CPU_STEP_OPTIONS, batch 128: ResNet-110 6.9 s
    vs 12.0 s with XLA's own, ResNet-20 the same; docs/notes.md) and leaves the weight
    gradient to XLA on GPU and TPU. HVPs take XLA's own (`resjax.probes.hessian.mean_loss_fn`)."""
    if weight_grad == 'auto':
        return jax.default_backend() == 'cpu'
    return weight_grad == 'matmul'


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    weight_grad: str = 'auto',
) -> jax.Array:
    """`lax.conv_general_dilated` with the matmul weight gradient where `weight_grad` picks it.

    Same arguments and numbers (within float rounding) as `lax.conv_general_dilated`. The
    matmul form covers NHWC/HWIO 2-D convolutions with explicit padding, no dilation, one
    feature group and a kernel larger than 1x1; anything else goes to XLA unchanged.
    """
    fallback = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    simple = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and not dilated
        and all(lo >= 0 and hi >= 0 for lo, hi in padding)
        and feature_group_count == 1
        and preferred_element_type is None
        and rhs.shape[:2] != (1, 1)
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    )
    if not simple:
        return fallback()
    if not use_matmul_weight_grad(weight_grad):
        return fallback()
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, strides, pads, precision)
