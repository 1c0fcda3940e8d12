"""A 2-D convolution whose weight gradient is a sum of matmuls, for XLA's CPU backend.

XLA lowers the weight gradient of a convolution (dL/dW) to another convolution whose "kernel"
is the whole activation map. On CPU that is the slow part of a ResNet train step: a 16->16
3x3 conv on 128x32x32 inputs takes ~12 ms forward, ~10 ms for dL/dx and ~240 ms for dL/dW
(docs/notes.md). Written as kh*kw matmuls of shifted inputs against the output gradient,
dL/dW[i, j] = sum_{n,h,w} x_pad[n, h*s + i, w*s + j, :]^T dy[n, h, w, :], it takes ~85 ms.

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

# Below this many output pixels per image XLA's own weight gradient is as fast or faster
# (batch 128, 3x3: 32x32x16 XLA 240 ms vs matmuls 87 ms; 16x16x32 48 vs 59; 8x8x64 22 vs 19).
MIN_OUTPUT_PIXELS = 32 * 32

WEIGHT_GRADS = ('auto', 'xla', 'matmul')


def _shifted_inputs(
    x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding: tuple
) -> list[jax.Array]:
    """The kh*kw views x_pad[:, i::s, j::s, :] the kernel taps see, each shaped like the output."""
    n, _, _, c = x.shape
    (kh, kw), (sh, sw) = kernel_hw, strides
    xp = _materialise(jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0))))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    return [
        lax.slice(
            xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]


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
    kh, kw = w.shape[:2]
    y = _conv(x, w, strides, padding, precision)
    # Linear in dx: XLA's convolution (its transpose is XLA's fast input gradient).
    dy = _conv(dx, w, strides, padding, precision)
    # Linear in dw: one matmul per kernel tap (its transpose is the fast weight gradient).
    for k, shifted in enumerate(_shifted_inputs(x, (kh, kw), strides, padding)):
        dy = dy + jnp.matmul(shifted, dw[k // kw, k % kw], precision=precision).astype(dy.dtype)
    return y, dy


def use_matmul_weight_grad(weight_grad: str, output_hw: tuple[int, int]) -> bool:
    """Whether `weight_grad` ('auto', 'xla' or 'matmul') picks the matmul form for a conv
    with this output size: 'auto' does on the CPU backend for maps of >= 32x32 pixels."""
    if weight_grad == 'auto':
        return jax.default_backend() == 'cpu' and output_hw[0] * output_hw[1] >= MIN_OUTPUT_PIXELS
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
        and feature_group_count == 1
        and preferred_element_type is None
        and rhs.shape[:2] != (1, 1)
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    )
    if not simple:
        return fallback()
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    output_hw = tuple(
        (lhs.shape[1 + a] + sum(pads[a]) - rhs.shape[a]) // strides[a] + 1 for a in (0, 1)
    )
    if not use_matmul_weight_grad(weight_grad, output_hw):
        return fallback()
    return _conv(lhs, rhs, strides, pads, precision)
