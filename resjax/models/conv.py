"""A 2-D convolution whose gradients XLA's CPU backend computes fast, unrolled or in a loop.

XLA lowers the weight gradient of a convolution (dL/dW) to another convolution whose "kernel"
is the whole activation map. On the CPU backend that convolution reads its input x in a
(C, H, W, N) layout, so XLA transposes x first, and it fuses x's elementwise producers
(relu(bn(conv) + shortcut), back through the blocks) into that transpose: it recomputes them
in a cache-hostile order, many times slower than a plain transposing copy, and more so the
deeper the chain. The 'stored' form computes the same weight gradient from x stored to a
buffer first (`_materialise`), so the transpose is that plain copy (profiles and step times:
docs/benchmarks.md).

XLA:CPU also puts only top-level convolutions into the dimension order its fast (Eigen)
convolution needs; inside a `lax.scan` body (`ResNet(scan_blocks=True)`) the two gradient
convolutions JAX derives run as naive loops (docs/notes.md). So the 'stored' form writes the
transposes out itself: its tangent is two convolutions whose *transposes* (the input and
weight gradients) are already in that order (NHWC input, HWIO kernel, NHWC output).

It is a `jax.custom_jvp`, so it composes with every transform resjax uses, forward-over-reverse
HVPs included, and JAX's transpose of the tangent gives the gradients. `conv_general_dilated`
below is a drop-in for `jax.lax.conv_general_dilated` (Flax's
`nn.Conv(conv_general_dilated=...)`): the same numbers, only computed differently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

WEIGHT_GRADS = ('auto', 'xla', 'stored')
# The name of every convolution's output for `jax.checkpoint` policies (`checkpoint_name`).
CONV_OUTPUT = 'conv_output'


def dirac_kernel(shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """The Dirac kernel of an HWIO convolution shape (k, k, c, c): 1 at the centre tap from
    channel i to channel i, 0 elsewhere, so that the convolution (stride 1, padding k // 2)
    is x -> x. ValueError unless the kernel is square with as many channels in as out."""
    if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
        raise ValueError(f'a Dirac kernel needs shape (k, k, c, c), not {tuple(shape)}')
    k, _, c, _ = shape
    return jnp.zeros(shape, dtype).at[k // 2, k // 2].set(jnp.eye(c, dtype=dtype))


def _materialise(x: jax.Array) -> jax.Array:
    """`x`, computed into a buffer once, so that XLA:CPU cannot fuse x's elementwise producer
    chain into the consumers given it (here: the weight gradient's transpose).

    A conditional on a traced predicate is a fusion boundary XLA:CPU keeps, provided its
    branches differ: with identical branches (or `lax.optimization_barrier`) XLA removes it.
    The second branch only runs when x's first element is NaN, and then gives NaN everywhere,
    as any weight gradient of a NaN input would be.
    """
    first = x.reshape(-1)[0]
    return lax.cond(first == first, lambda v: v, lambda v: v + first * 0, x)


_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _stored_conv(conv: Callable, x: jax.Array, w: jax.Array) -> jax.Array:
    return conv(x, w, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@_stored_conv.defjvp
def _stored_conv_jvp(conv, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    # Each term is written so that its transpose, which JAX derives and the backward pass runs,
    # is a convolution in XLA:CPU's native order (NHWC input, HWIO kernel, NHWC output): the
    # input gradient's term reads the kernel as HWOI, the weight gradient's reads the stored x
    # as CHWN and writes HWNC. XLA inserts these transposes itself for a top-level convolution,
    # but not inside a loop body.
    t_x = conv(dx, w.transpose(0, 1, 3, 2), dimension_numbers=('NHWC', 'HWOI', 'NHWC'))
    t_w = conv(
        _materialise(x).transpose(3, 1, 2, 0),
        dw.transpose(2, 0, 1, 3),
        dimension_numbers=('CHWN', 'IHWO', 'HWNC'),
    ).transpose(2, 0, 1, 3)
    return _stored_conv(conv, x, w), t_x + t_w


def weight_grad_form(weight_grad: str) -> str:
    """'xla' or 'stored': what `weight_grad` ('auto', 'xla' or 'stored') means on this backend.

    'auto' is 'stored' on the CPU backend (where it is faster) and 'xla' on GPU and TPU."""
    if weight_grad == 'auto':
        return 'stored' if jax.default_backend() == 'cpu' else 'xla'
    return weight_grad


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
    """`lax.conv_general_dilated` (same arguments, same numbers), with the gradients computed
    in the stored form where `weight_grad_form(weight_grad)` is 'stored' and the convolution
    is a 2-D NHWC/HWIO one without feature groups (XLA's own otherwise). The output is named
    `CONV_OUTPUT` for `jax.checkpoint` policies."""
    form = weight_grad_form(weight_grad)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != _NHWC_HWIO or feature_group_count != 1:
        form = 'xla'  # The stored form is written for Flax's 2-D NHWC/HWIO convolutions.
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        feature_group_count=feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if form == 'xla':
        out = conv(lhs, rhs, dimension_numbers=dimension_numbers)
    else:
        out = _stored_conv(conv, lhs, rhs)
    return checkpoint_name(out, CONV_OUTPUT)
