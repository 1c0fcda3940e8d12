"""Loss-landscape geometry as pure functions: filter-normalised directions, losses on grids of
parameter sets evaluated in vmapped chunks, straight-line interpolation and convexity summaries
of a 2-D grid. Curvature (eigen directions, Lanczos) is `resjax.probes.curvature`'s.

A *point* is a pytree `{'params': ..., 'batch_stats': ...}` (the variables a forward pass needs);
a *direction* has the same structure. The point at coefficients c is `origin + sum_i c_i d_i`,
leaf by leaf. Random and curvature directions leave 'batch_stats' alone (zero direction);
interpolation moves the running statistics along with the weights, so both endpoints are exact.

All losses are the MEAN softmax cross-entropy (nats) over the examples, accuracies the fraction
correct; BatchNorm runs in 'eval' mode (running statistics) unless `bn_mode='train'` (each
batch's own statistics, running ones untouched), as in `resjax.probes.hessian`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from absl import logging
from jax.flatten_util import ravel_pytree

from resjax.steps import cross_entropy

PyTree = Any
BIASBN = ('zero', 'include')


# ---------------------------------------------------------------------------------------------
# Directions.


def filter_norms(tree: PyTree) -> PyTree:
    """L2 norm of every filter of every leaf with ndim >= 2, shape [num_filters].

    A filter is one output unit: a slice along the LAST axis (conv kernels are HWIO, so one
    output channel; dense kernels are (in, out), so one output neuron). 1-D leaves give None.
    """
    return jax.tree.map(
        lambda x: (
            jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)))) if x.ndim >= 2 else None
        ),
        tree,
    )


def filter_normalize(direction: PyTree, params: PyTree, biasbn: str = 'zero') -> PyTree:
    """Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets", §4) filter normalisation.

    Each filter of `direction` (see `filter_norms`) is rescaled to the norm of the same filter
    of `params`: d_f <- d_f / ||d_f|| * ||w_f||. A zero weight filter gives a zero direction
    filter. 1-D leaves (biases, BN scale and bias): `biasbn='zero'` sets them to 0 (Li et al.'s
    `--xignore biasbn`, the default of their experiments); `'include'` sets them to the weights
    themselves (what their code does for 1-D leaves when not ignored: each scalar is its own
    filter, |d_i| = |w_i|).
    """
    if biasbn not in BIASBN:
        raise ValueError(f'biasbn={biasbn!r} is unknown; use one of {BIASBN}')

    def one(d, w):
        if w.ndim <= 1:
            return jnp.zeros_like(w) if biasbn == 'zero' else w
        axes = tuple(range(w.ndim - 1))
        w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        return d * w_norm / jnp.where(d_norm > 0, d_norm, 1.0)

    return jax.tree.map(one, direction, params)


def random_direction(key: jax.Array, params: PyTree, biasbn: str = 'zero') -> PyTree:
    """A standard-Gaussian direction shaped like `params`, filter-normalised against them.

    One draw of the flattened parameter vector (one threefry call compiles far faster on CPU
    than one per leaf), so the direction depends on `key` and the parameter shapes only.
    """
    flat, unravel = ravel_pytree(params)
    return filter_normalize(unravel(jax.random.normal(key, flat.shape, flat.dtype)), params, biasbn)


def scale_to_norm(direction: PyTree, norm: float | jax.Array) -> PyTree:
    """`direction` rescaled to L2 norm `norm` over all its leaves (zero stays zero)."""
    n = otu.tree_norm(direction)
    return otu.tree_scale(jnp.where(n > 0, norm / jnp.where(n > 0, n, 1.0), 0.0), direction)


def as_point(params: PyTree, batch_stats: PyTree) -> dict:
    """The variables of a forward pass as one pytree: {'params', 'batch_stats'}."""
    return {'params': params, 'batch_stats': batch_stats}


def params_direction(params_direction_tree: PyTree, batch_stats: PyTree) -> dict:
    """A point-shaped direction that moves the parameters only (running statistics fixed)."""
    return as_point(params_direction_tree, jax.tree.map(jnp.zeros_like, batch_stats))


# ---------------------------------------------------------------------------------------------
# Loss at many points.


def batch_sums(
    model: nn.Module, point: dict, batch: dict, bn_mode: str = 'eval'
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of per-example cross-entropy, number correct, number of examples) over the
    unmasked examples of `batch` at the variables `point`."""
    variables = {'params': point['params'], 'batch_stats': point['batch_stats']}
    if bn_mode == 'train':
        logits, _ = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
    elif bn_mode == 'eval':
        logits = model.apply(variables, batch['image'], train=False)
    else:
        raise ValueError(f'bn_mode={bn_mode!r} is unknown; use train or eval')
    mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
    loss = cross_entropy(logits, batch['label'])
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return jnp.sum(loss * mask), jnp.sum(correct * mask), jnp.sum(mask)


def make_grid_eval(model: nn.Module, bn_mode: str = 'eval') -> Callable[..., tuple]:
    """Returns jitted `f(origin, directions, coeffs, batch) -> (loss_sums [P], correct [P],
    count)`: `batch_sums` at the P points origin + sum_i coeffs[p, i] * directions[i], the P
    points vmapped (one compiled call per chunk of grid points, not one per point)."""

    def at(origin, directions, c, batch):
        def combine(o, *ds):
            return o + sum(c[i].astype(o.dtype) * d for i, d in enumerate(ds))

        return batch_sums(model, jax.tree.map(combine, origin, *directions), batch, bn_mode)

    @jax.jit
    def grid_eval(origin, directions, coeffs, batch):
        loss, correct, count = jax.vmap(at, in_axes=(None, None, 0, None))(
            origin, directions, coeffs, batch
        )
        return loss, correct, count[0]

    return grid_eval


def evaluate_points(
    grid_eval: Callable[..., tuple],
    origin: dict,
    directions: Sequence[dict],
    coeffs: np.ndarray,
    batches: Sequence[dict],
    chunk: int = 8,
    what: str = 'grid',
) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss (nats) and accuracy at every row of `coeffs` [N, len(directions)] over all
    `batches` (unmasked examples). Points run `chunk` at a time (the last chunk is padded so one
    compile serves all); batches loop on the host. Logs progress with an ETA."""
    coeffs = np.asarray(coeffs, np.float32).reshape(len(coeffs), len(directions))
    n = len(coeffs)
    padded = np.concatenate([coeffs, np.repeat(coeffs[-1:], (-n) % chunk, axis=0)])
    loss_sum = np.zeros(len(padded))
    correct = np.zeros(len(padded))
    count = 0.0
    start = time.perf_counter()
    num_chunks = len(padded) // chunk
    for j in range(num_chunks):
        c = jnp.asarray(padded[j * chunk : (j + 1) * chunk])
        count = 0.0
        for batch in batches:
            ls, cr, ct = jax.device_get(grid_eval(origin, tuple(directions), c, batch))
            loss_sum[j * chunk : (j + 1) * chunk] += ls
            correct[j * chunk : (j + 1) * chunk] += cr
            count += float(ct)
        if n > 1 and (j == 0 or (j + 1) % max(1, num_chunks // 10) == 0):
            elapsed = time.perf_counter() - start
            logging.info(
                '%s: %d/%d points, %.1f s, ETA %.0f s',
                what,
                min((j + 1) * chunk, n),
                n,
                elapsed,
                elapsed / (j + 1) * (num_chunks - j - 1),
            )
    return loss_sum[:n] / count, correct[:n] / count


# ---------------------------------------------------------------------------------------------
# Convexity of a 2-D grid.


def grid_curvature(loss: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> dict[str, np.ndarray]:
    """Eigenvalues of the 2x2 finite-difference Hessian of a loss surface at interior points.

    `loss[i, j]` is the loss at (xs[i], ys[j]); central second differences (uniform spacing) give
    h_xx, h_yy, h_xy in loss / coefficient**2. Returns 'h_min', 'h_max' [nx-2, ny-2] and
    'ratio' = |h_min / h_max| (Li et al. 2018's Fig. 7 map, but for the 2-D slice).
    """
    loss = np.asarray(loss, np.float64)
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    hxx = (loss[2:, 1:-1] - 2 * loss[1:-1, 1:-1] + loss[:-2, 1:-1]) / dx**2
    hyy = (loss[1:-1, 2:] - 2 * loss[1:-1, 1:-1] + loss[1:-1, :-2]) / dy**2
    hxy = (loss[2:, 2:] - loss[2:, :-2] - loss[:-2, 2:] + loss[:-2, :-2]) / (4 * dx * dy)
    mean, diff = (hxx + hyy) / 2, np.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2)
    h_min, h_max = mean - diff, mean + diff
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = np.abs(h_min / h_max)
    return {'h_min': h_min, 'h_max': h_max, 'ratio': ratio}


def convexity_summary(
    loss: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float | None = None
) -> dict[str, float]:
    """Scalar convexity measures of a 2-D loss grid (interior points; within `radius` of the
    origin in coefficient units if given):

    - `nonconvex_fraction`: fraction of points whose 2-D finite-difference Hessian has a
      negative eigenvalue (h_min < 0);
    - `mean_abs_ratio`: mean over points of |h_min / h_max| (0 = convex with a flat direction,
      1 = as concave as convex; Li et al.'s map, averaged);
    - `max_concavity_ratio`: max over points of max(0, -h_min) / max|h_max| over the grid;
    - `center_h_min`, `center_h_max`: the two eigenvalues at the grid point nearest the origin.
    """
    curv = grid_curvature(loss, xs, ys)
    gx, gy = np.meshgrid(xs[1:-1], ys[1:-1], indexing='ij')
    keep = np.ones_like(gx, bool) if radius is None else np.hypot(gx, gy) <= radius + 1e-9
    h_min, h_max, ratio = curv['h_min'][keep], curv['h_max'][keep], curv['ratio'][keep]
    centre = np.unravel_index(np.argmin(np.hypot(gx, gy)), gx.shape)
    finite = np.isfinite(ratio)
    return {
        'nonconvex_fraction': float(np.mean(h_min < 0)),
        'mean_abs_ratio': float(np.mean(ratio[finite])) if finite.any() else float('nan'),
        'max_concavity_ratio': float(np.max(np.maximum(0, -h_min)) / np.max(np.abs(h_max))),
        'center_h_min': float(curv['h_min'][centre]),
        'center_h_max': float(curv['h_max'][centre]),
        'num_points': int(keep.sum()),
    }
