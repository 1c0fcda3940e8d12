"""Block probes: what does each block do to its input, and how far has it moved?

They test the usual answers to "why is a residual easier to learn?" (the study report's "What
the question asks", docs/study.md): (a) deep blocks only need small changes, which a residual
block makes with a small branch F(x) while a plain block must build a near-identity out of
nonlinear layers; (c) the plain net ends up far from where it started. Pure functions of the
activations a model sows (each stem and block `output`, and a residual block's `branch` F(x) and
`shortcut`, as `resjax.models.resnet` sows them) and of two parameter trees. The blocks' order
is the model's layout (`resjax.models.layout.Layout`, any family that describes one); without a
layout, the sown names in sorted order, which is forward order for resjax's ResNets. All norms
are L2 over every element, batch included.

Metric names (`<block>` a block's parameter-tree key, e.g. `001_stage1_block1`; `k-1` is the
block before, the stem for the first block):

- `branch_ratio/<block>`: ||F(x)|| / ||shortcut(x)||, residual blocks only: the size of the
  residual branch (after its last BN, before the add) against what the shortcut carries.
- `block_change/<block>`: ||h_k - P h_{k-1}|| / ||P h_{k-1}|| with h the block outputs (after the
  final ReLU). P is the identity, or for a block that changes the shape the parameter-free
  map of option A (every other pixel, new channels zero): the change from "doing nothing".
  Defined alike for plain and residual nets.
- `cka/<block>`: linear CKA (Kornblith et al. 2019, eq. 5, with centred features) between
  h_{k-1} and h_k, one example per row: 1 means the two represent the examples alike up to a
  rotation and scale; `cka_matrix` gives every pair of blocks.
- `descent_cos/<block>`: cos(h_k - h_{k-1}, -dL/dh_{k-1}), the cosine between the change the
  block makes and the negative gradient of the mean loss at its input (Jastrzebski et al. 2018:
  a block that refines its input moves it downhill, cosine > 0); blocks whose input and output
  shapes agree, plain and residual alike, so the two nets are compared on one definition.
  `branch_descent_cos/<block>`: the same with the residual branch F(x) in place of the change
  (residual blocks of that kind only). Cosines over every element, batch included; 0 where the
  change or the gradient is exactly 0 (a constructed identity block: no direction). Needs the
  activation gradients, so only the train step's probes have them (BN as that step's: training
  mode).
- `init_distance/<layer>`: ||W_t - W_0|| / ||W_0|| of each conv and dense layer (kernel and bias
  together) from the run's initial parameters (a constructed run's: its identity blocks);
  `init_distance/global` over every parameter, BN's included.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from resjax.models.layout import Layout
from resjax.probes import signals

PyTree = Any


def _flat(tree: PyTree) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def block_outputs(
    intermediates: PyTree, layout: Layout | None = None
) -> list[tuple[str, jax.Array]]:
    """(name, output) of the stem and of every block, in forward order (`layout.names`, or
    without a layout the sorted names), from a sown 'intermediates' collection; the logits are
    not a block."""
    flat = _flat(intermediates)
    if layout is None:
        names = sorted(p.rsplit('/', 1)[0] for p in flat if p.endswith('/output'))
    else:
        names = list(layout.names)
    return [(name, flat[f'{name}/output'][0]) for name in names]


def to_shape(h: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The parameter-free identity of option A from NHWC `h` to `shape`: every s-th pixel
    (s = the spatial ratio), zero channels appended. The identity if the shapes agree."""
    stride = h.shape[1] // shape[1]
    if stride > 1:
        h = h[:, ::stride, ::stride, :]
    if h.shape[-1] < shape[-1]:
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (0, shape[-1] - h.shape[-1])))
    if h.shape != tuple(shape):
        raise ValueError(f'no option-A identity from shape {h.shape} to {tuple(shape)}')
    return h


def linear_cka(x: jax.Array, y: jax.Array) -> jax.Array:
    """Linear CKA of two representations of the same n examples (first axis; the rest are
    flattened): <K, L>_F / (||K||_F ||L||_F) with K, L the Gram matrices of the centred
    features. Invariant to rotations and isotropic scaling of either; float32.

    Cost: with n examples and d_x, d_y features, the n x n Gram form when n <= max(d_x, d_y),
    else the same number in feature space, ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) (eq. 5
    again): memory O(min(n^2, max(d_x, d_y)^2)) floats, so a large probe batch costs no n^2.
    """
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    y = y.reshape(y.shape[0], -1).astype(jnp.float32)
    x = x - jnp.mean(x, axis=0)
    y = y - jnp.mean(y, axis=0)
    if x.shape[0] > max(x.shape[1], y.shape[1]):
        cross, gx, gy = y.T @ x, x.T @ x, y.T @ y
        return jnp.sum(cross * cross) / jnp.sqrt(jnp.sum(gx * gx) * jnp.sum(gy * gy))
    gx, gy = x @ x.T, y @ y.T
    return jnp.sum(gx * gy) / jnp.sqrt(jnp.sum(gx * gx) * jnp.sum(gy * gy))


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def block_signals(intermediates: PyTree, layout: Layout | None = None) -> dict[str, jax.Array]:
    """`branch_ratio/`, `block_change/` and `cka/` of every block (module docstring) from the
    'intermediates' collection of one forward pass (training or eval mode: the caller's), the
    blocks in `layout`'s order (`block_outputs`)."""
    out = {}
    outputs = block_outputs(intermediates, layout)
    for (_, before), (name, after) in zip(outputs, outputs[1:]):
        start = to_shape(before, after.shape)
        out[f'block_change/{name}'] = _norm(after - start) / _norm(start)
        out[f'cka/{name}'] = linear_cka(before, after)
    flat = _flat(intermediates)
    if layout is None:
        residual = sorted(p.rsplit('/', 1)[0] for p in flat if p.endswith('/branch'))
    else:
        residual = [b.name for b in layout.residual_blocks()]
    for block in residual:
        out[f'branch_ratio/{block}'] = _norm(flat[f'{block}/branch'][0]) / _norm(
            flat[f'{block}/shortcut'][0]
        )
    return out


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    den = _norm(a) * _norm(b)
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), 0.0)


def descent_cosines(
    intermediates: PyTree, activation_grads: PyTree, layout: Layout | None = None
) -> dict[str, jax.Array]:
    """`descent_cos/` and `branch_descent_cos/` of every block whose input and output shapes
    agree (module docstring), from one forward pass's 'intermediates' and the gradients of the
    mean loss w.r.t. the observed activations (`signals.value_and_grads`), blocks in `layout`'s
    order."""
    outputs = block_outputs(intermediates, layout)
    grads, flat, out = _flat(activation_grads), _flat(intermediates), {}
    for (prev, before), (name, after) in zip(outputs, outputs[1:]):
        if before.shape != after.shape:
            continue
        downhill = -grads[f'{prev}/output']
        out[f'descent_cos/{name}'] = _cosine(after - before, downhill)
        if f'{name}/branch' in flat:
            out[f'branch_descent_cos/{name}'] = _cosine(flat[f'{name}/branch'][0], downhill)
    return out


def cka_matrix(intermediates: PyTree, layout: Layout | None = None) -> tuple[list[str], jax.Array]:
    """(names, B x B matrix) of linear CKA between every pair of stem and block outputs, in
    `block_outputs` order."""
    outputs = block_outputs(intermediates, layout)
    feats = [h.reshape(h.shape[0], -1) for _, h in outputs]
    matrix = jnp.array([[linear_cka(a, b) for b in feats] for a in feats])
    return [n for n, _ in outputs], matrix


def init_distance(params: PyTree, initial: PyTree) -> dict[str, jax.Array]:
    """`init_distance/<layer>` (conv and dense layers) and `init_distance/global`."""
    moved = jax.tree.map(jnp.subtract, params, initial)
    layers = signals.weight_layers(params)
    d, w = signals.layer_norms(moved, layers), signals.layer_norms(initial, layers)
    out = {f'init_distance/{name}': d[name] / w[name] for name in layers}
    out['init_distance/global'] = _norm_tree(moved) / _norm_tree(initial)
    return out


def _norm_tree(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
