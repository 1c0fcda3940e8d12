"""Loss-landscape geometry of any JAX loss, as pure functions: directions (filter-normalised
random, Hessian eigenvectors, the gradient), the loss at many points origin + sum_i c_i d_i
evaluated in vmapped chunks (1-D and 2-D slices, straight-line interpolation) and convexity
summaries of a 2-D grid.

The input is what `resjax.probes.curvature` takes: a MEAN loss `loss_fn(params, batch)` over one
batch's examples, closed over the model and anything fixed (BatchNorm mode, a dropout rng), or
`loss_fn(params, batch, state)` with model state such as BatchNorm statistics passed as
`state=` (as `curvature.Hessian` takes it: held fixed, never differentiated or moved),
returning a scalar or a dict of scalars (e.g. {'loss', 'accuracy'}: every entry is averaged
the same way). `batches` is one batch or a list/tuple of them; a value over all of
them is the EXAMPLE-weighted mean, batch b weighted by `curvature.example_count(b) / total`
(masked examples do not count), so it equals the value on one concatenated batch. `params` is
any pytree of floating arrays; a direction has its structure. Nothing here knows about Flax
variables, cross-entropy or workdirs.

    d1, d2 = (landscape.random_direction(jax.random.key(i), params) for i in (0, 1))
    xs = np.linspace(-1, 1, 21)
    loss = landscape.slice_2d(loss_fn, params, (d1, d2), xs, xs, batches)  # [21, 21]
    summary = landscape.convexity_summary(loss, xs, xs)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from absl import logging
from jax.flatten_util import ravel_pytree

from resjax import xla
from resjax.probes import curvature

PyTree = Any
# A mean loss of (params, batch), or of (params, batch, state): a scalar or a dict of scalars.
LossFn = Callable[..., Any]
# What the evaluations return: float64 numpy arrays, one per output of the loss.
Values = np.ndarray | dict[str, np.ndarray]
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


@functools.partial(jax.jit, static_argnames='biasbn', compiler_options=xla.FAST_COMPILE)
def random_direction(key: jax.Array, params: PyTree, biasbn: str = 'zero') -> PyTree:
    """A standard-Gaussian direction shaped like `params`, filter-normalised against them.

    One draw of the flattened parameter vector (one threefry call compiles far faster on CPU
    than one per leaf), so the direction depends on `key` and the parameter shapes only.
    Compiled once per parameter shapes, with XLA's fast-compile options (the threefry graph is
    what costs: `resjax.xla`).
    """
    flat, unravel = ravel_pytree(params)
    return filter_normalize(unravel(jax.random.normal(key, flat.shape, flat.dtype)), params, biasbn)


def scale_to_norm(direction: PyTree, norm: float | jax.Array) -> PyTree:
    """`direction` rescaled to L2 norm `norm` over all its leaves (zero stays zero)."""
    n = otu.tree_norm(direction)
    return otu.tree_scale(jnp.where(n > 0, norm / jnp.where(n > 0, n, 1.0), 0.0), direction)


def gradient_direction(hessian: curvature.Hessian) -> PyTree:
    """The gradient of the mean loss over `hessian`'s batches at its params, as a params-shaped
    pytree (`curvature.Hessian.gradient`: batches weighted by example count). Units: loss per
    unit of each parameter; rescale with `scale_to_norm`."""
    return hessian.unflatten(hessian.gradient())


def eigen_directions(
    hessian: curvature.Hessian, k: int, key: jax.Array, order: int = 40, progress: str = ''
) -> tuple[list[PyTree], dict[str, Any]]:
    """The eigenvectors of the k algebraically largest eigenvalues of the Hessian of the mean
    loss, as params-shaped pytrees of unit L2 norm (sign arbitrary).

    `order` Lanczos steps from `hessian.random(key)` (`curvature.top_eigenpairs`; the same key
    and order give the same run as a `top_eigenpairs` call of the curvature probes). Returns
    (directions, `top_eigenpairs`' dict: 'eigenvalues' descending in loss / param**2,
    'residuals', ...). `order` + k + 1 HVPs.
    """
    top = curvature.top_eigenpairs(hessian.hvp, hessian.random(key), order, k, progress=progress)
    return [hessian.unflatten(v) for v in top['vectors']], top


# ---------------------------------------------------------------------------------------------
# The loss at many points.


def _point(origin: PyTree, directions: tuple, c: jax.Array) -> PyTree:
    def leaf(o, *ds):
        return o + sum(c[i].astype(o.dtype) * d for i, d in enumerate(ds))

    return jax.tree.map(leaf, origin, *directions)


@functools.partial(jax.jit, static_argnums=0)
def _values_at(loss_fn: LossFn, origin: PyTree, directions: tuple, coeffs, batch, state) -> Any:
    # One compiled call per chunk of points (vmapped), not one per point.
    args = (batch,) if state is None else (batch, state)
    at = lambda c: loss_fn(_point(origin, directions, c), *args)
    return jax.vmap(at)(coeffs)


def check_like(tree: PyTree, params: PyTree, name: str) -> None:
    """Raises ValueError (one line, naming the first differing leaf) unless `tree` has the
    structure and leaf shapes of `params`: a direction of another shape would broadcast."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    try:
        leaves = jax.tree_util.tree_structure(params).flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{name} is not a tree like params ({str(e).splitlines()[0]})') from None
    for (path, p), d in zip(paths, leaves, strict=True):
        if np.shape(d) != np.shape(p):
            raise ValueError(
                f'{name}: leaf {jax.tree_util.keystr(path)} has shape {np.shape(d)}, the '
                f'parameter {np.shape(p)}'
            )


def evaluate_points(
    loss_fn: LossFn,
    origin: PyTree,
    directions: Sequence[PyTree],
    coeffs: np.ndarray,
    batches: PyTree | Sequence[PyTree],
    *,
    chunk: int = 8,
    progress: str = '',
    state: PyTree = None,
) -> Values:
    """The mean loss at the points origin + sum_i coeffs[p, i] * directions[i] (leaf by leaf), for
    every row p of `coeffs` [P, len(directions)] (no directions and coeffs [1, 0]: the origin).

    Each batch's mean (`loss_fn`) is weighted by its example count over `batches` (batches
    without examples are skipped). Points run `chunk` at a time through one vmapped, jitted call
    (at most `chunk` at a time, in as few equal chunks as that allows, the last padded, so one
    compile per loss function, shapes and chunk size serves all;
    define `loss_fn` once: the compile cache keys on it); batches loop on the host. Logs
    progress with an ETA when `progress` names the run. With `state` (e.g. {'batch_stats':
    ...}) the loss is `loss_fn(params, batch, state)`, the same state at every point.

    Returns:
      float64 [P], or a dict of them if `loss_fn` returns a dict: the loss's own units.
    """
    batches = list(batches) if isinstance(batches, (list, tuple)) else [batches]
    weights = curvature.example_weights(batches)
    weighted = [(b, w) for b, w in zip(batches, weights) if w > 0]
    directions = tuple(directions)
    for i, d in enumerate(directions):
        check_like(d, origin, f'direction {i}')
    coeffs = np.asarray(coeffs, np.float32).reshape(len(coeffs), len(directions))
    n = len(coeffs)
    # As few chunks as `chunk` allows, each as small as they allow: 9 points in 2 chunks of 5
    # pad 1 point, not 7.
    chunk = -(-n // -(-n // chunk))
    padded = np.concatenate([coeffs, np.repeat(coeffs[-1:], (-n) % chunk, axis=0)])
    num_chunks = len(padded) // chunk
    chunks = []
    start = time.perf_counter()
    for j in range(num_chunks):
        c = jnp.asarray(padded[j * chunk : (j + 1) * chunk])
        total = None
        for batch, w in weighted:
            v = jax.device_get(_values_at(loss_fn, origin, directions, c, batch, state))
            v = jax.tree.map(lambda x, w=w: np.asarray(x, np.float64) * w, v)
            total = v if total is None else jax.tree.map(np.add, total, v)
        chunks.append(total)
        if progress and n > 1 and (j == 0 or (j + 1) % max(1, num_chunks // 10) == 0):
            elapsed = time.perf_counter() - start
            logging.info(
                '%s: %d/%d points, %.1f s, ETA %.0f s',
                progress, min((j + 1) * chunk, n), n, elapsed,
                elapsed / (j + 1) * (num_chunks - j - 1),
            )  # fmt: skip
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *chunks)


def slice_1d(
    loss_fn: LossFn,
    origin: PyTree,
    direction: PyTree,
    alphas: np.ndarray,
    batches: PyTree | Sequence[PyTree],
    *,
    chunk: int = 8,
    progress: str = '',
    state: PyTree = None,
) -> Values:
    """The mean loss at origin + a * direction for each a in `alphas` [n]: float64 [n] (or a
    dict of them). `chunk`, `progress`, `state`: as in `evaluate_points`."""
    alphas = np.asarray(alphas)
    return evaluate_points(
        loss_fn,
        origin,
        [direction],
        alphas[:, None],
        batches,
        chunk=chunk,
        progress=progress,
        state=state,
    )


def slice_2d(
    loss_fn: LossFn,
    origin: PyTree,
    directions: tuple[PyTree, PyTree],
    xs: np.ndarray,
    ys: np.ndarray,
    batches: PyTree | Sequence[PyTree],
    *,
    chunk: int = 8,
    progress: str = '',
    state: PyTree = None,
) -> Values:
    """The mean loss on the grid origin + x d1 + y d2, `directions` = (d1, d2): float64
    [len(xs), len(ys)] (or a dict of them), entry [i, j] at (xs[i], ys[j]). `chunk`,
    `progress`, `state`: as in `evaluate_points`."""
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    coeffs = np.stack([gx.ravel(), gy.ravel()], 1)
    values = evaluate_points(
        loss_fn, origin, directions, coeffs, batches, chunk=chunk, progress=progress, state=state
    )
    return jax.tree.map(lambda v: v.reshape(gx.shape), values)


def interpolation(
    loss_fn: LossFn,
    start: PyTree,
    end: PyTree,
    alphas: np.ndarray,
    batches: PyTree | Sequence[PyTree],
    *,
    chunk: int = 8,
    progress: str = '',
    state: PyTree = None,
) -> Values:
    """The mean loss at (1 - a) * start + a * end for each a in `alphas` [n] (Goodfellow et al.
    2015; a outside [0, 1] extrapolates): float64 [n] (or a dict of them). The points are
    exactly `start` at a = 0 and exactly `end` at a = 1, so those values are the endpoints'
    losses. `chunk`, `progress`, `state`: as in `evaluate_points`."""
    alphas = np.asarray(alphas, np.float64)
    # Around a zero origin, (1 - a) start + a end has no rounding at either endpoint; the
    # form start + a (end - start) does at a = 1.
    zero = jax.tree.map(jnp.zeros_like, start)
    coeffs = np.stack([1 - alphas, alphas], 1)
    return evaluate_points(
        loss_fn, zero, [start, end], coeffs, batches, chunk=chunk, progress=progress, state=state
    )


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
