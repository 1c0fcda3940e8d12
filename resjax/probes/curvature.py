"""Curvature of any JAX loss: one HVP builder and one implementation of each algorithm.

The input is a MEAN loss `loss_fn(params, batch) -> scalar` (or `loss_fn(params, batch, state)`
with model state such as BatchNorm statistics passed as an argument, so a new value reuses the
compile), closed over the model and anything fixed (a dropout rng). `Hessian` binds it to
params and to one batch or a sequence of batches; dataset-level quantities (HVPs, gradient,
loss) are weighted by example count (a batch's leading dimension, or `batch['mask'].sum()`), so
the result is the Hessian of the mean loss over all examples, never a sum. Nothing here knows
about workdirs, configs or layer names of a particular model.

The algorithms take `hvp: v -> H v` on FLAT vectors (`Hessian.hvp`, or `lambda v: a @ v` for a
matrix) and run on the host around one jitted HVP: on XLA:CPU a convolution's gradient inside
a `lax` loop body misses the fast path and costs dozens of standalone ones (docs/notes.md), and
one scalar per iteration to the host costs nothing next to an HVP. Dots against stored vectors
use `Precision.HIGHEST` (GPU default f32 matmuls are TF32). Eigenvalues come back as float64
numpy (one tridiagonal solve on the host), vectors as flat device arrays (`Hessian.unravel`).
Lanczos, the top eigenpairs and SLQ are in `resjax.probes.lanczos`, re-exported here.

    h = curvature.Hessian(loss_fn, params, batches)
    eigenvalues, eigenvectors = h.eigenvalues(top_n=3)    # PyHessian's one-call interface
    trace, stderr = h.trace()
    grid, density = h.density()
    top = curvature.top_eigenpairs(h.hvp, h.random(key), order=40, k=3)  # or each algorithm
    trace, stderr = curvature.hutchinson_trace(h.hvp, h.dim, key, num_samples=20, dtype=h.dtype)

`loss_fn` must be deterministic (fixed dropout rng; BatchNorm in eval mode or on the probe
batch's own statistics with the running ones untouched).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.flatten_util import ravel_pytree

from resjax import xla

# Lanczos, eigenpairs and SLQ live in `lanczos`; re-exported so `curvature.X` reaches them all.
from resjax.probes.lanczos import (  # noqa: F401
    FlatHVP,
    lanczos,
    random_vector,
    ritz_and_weights,
    slq,
    spectral_density,
    top_eigenpairs,
    tridiagonal_eigh,
)

PyTree = Any

_HIGHEST = jax.lax.Precision.HIGHEST
# A single batch's linearised gradient keeps every residual of a forward+backward pass alive;
# above this many bytes `Hessian` recomputes them per HVP instead (override per call).
LINEARIZE_MAX_BYTES = 2 * 2**30


# ---------------------------------------------------------------------------------------------
# The operator: HVPs, gradient and loss of the example-weighted mean loss.


def example_count(batch: PyTree) -> float:
    """A batch's number of examples: `batch['mask'].sum()` if it has a mask, else the leading
    dimension of its first leaf."""
    if isinstance(batch, dict) and 'mask' in batch:
        return float(np.sum(jax.device_get(batch['mask'])))
    return float(np.shape(jax.tree.leaves(batch)[0])[0])


def example_weights(batches: Sequence[PyTree]) -> list[float]:
    """Each batch's share of the examples (`example_count` / total): the weights of a
    dataset-level mean. Raises ValueError if the batches hold no example at all (empty, or
    every mask entry 0): a mean over nothing has no value."""
    counts = [example_count(b) for b in batches]
    total = sum(counts)
    if total <= 0:
        raise ValueError(
            f'the {len(counts)} batch(es) given hold no example (empty, or every mask entry is '
            '0); pass at least one example'
        )
    return [n / total for n in counts]


def _bind(loss_fn, batch, state):
    return (lambda p: loss_fn(p, batch)) if state is None else (lambda p: loss_fn(p, batch, state))


def _flat_grad(loss_fn, params, batch, state):
    return ravel_pytree(jax.grad(_bind(loss_fn, batch, state))(params))[0]


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """H v for pytrees, H the Hessian of `loss_fn: params -> scalar` at `params`, by
    forward-over-reverse AD (one jvp of the gradient): the HVP every probe here uses."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _hvp(loss_fn, params, batch, state, v):
    unravel = ravel_pytree(params)[1]
    return ravel_pytree(hvp(_bind(loss_fn, batch, state), params, unravel(v)))[0]


def _linearize(loss_fn, params, batch, state):
    # The forward and backward passes run once here; the returned `Partial` holds their
    # residuals as leaves, so it crosses jit boundaries and one compile applies it to any v.
    flat, unravel = ravel_pytree(params)
    grad_fn = lambda f: _flat_grad(loss_fn, unravel(f), batch, state)
    return jax.linearize(grad_fn, flat)[1]


def _loss(loss_fn, params, batch, state):
    return _bind(loss_fn, batch, state)(params)


def _apply(linear: Callable[[jax.Array], jax.Array], v: jax.Array) -> jax.Array:
    return linear(v)


@functools.cache
def _jitted(fn: Callable, static_loss: bool = True) -> Callable:
    """`fn` under `xla.jit` (the loss function static), built on first use: `xla.jit` asks
    for the default backend, which must not start at import, before a multi-host run's
    `jax.distributed.initialize`."""
    return xla.jit(fn, static_argnums=0) if static_loss else xla.jit(fn)


_RESIDUAL_BYTES: dict = {}


def _residual_bytes(loss_fn, params, batch, state) -> int:
    key = (loss_fn, *(jax.tree.structure(x) for x in (params, batch, state)))
    key += tuple((x.shape, x.dtype) for x in jax.tree.leaves((params, batch, state)))
    if key not in _RESIDUAL_BYTES:  # One trace per loss and shapes, not per probe.
        shapes = jax.eval_shape(functools.partial(_linearize, loss_fn), params, batch, state)
        _RESIDUAL_BYTES[key] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    return _RESIDUAL_BYTES[key]


@dataclasses.dataclass
class Hessian:
    """The Hessian of the mean loss over `batches` at `params`, as flat HVPs.

    `loss_fn(params, batch)` (or `(params, batch, state)` if `state` is given) is one batch's
    MEAN loss; `batches` is one batch or a sequence of them; batch b's HVP, gradient and loss are
    weighted by `example_count(b) / total`. Define `loss_fn` once (jit caches key on it).

    HVPs are forward-over-reverse. On a single batch the gradient is linearised once (one
    forward+backward pass, as PyHessian reuses its graph) and every HVP only pushes a tangent
    through the stored residuals, cheaper per HVP (docs/notes.md), if those residuals fit in
    `max_residual_bytes`; with several batches (their residuals would all stay live) or more
    residual memory than that, every HVP recomputes its batch's forward and backward pass.
    `linearize=True/False` forces the choice; `self.linearized` says which was used.
    """

    loss_fn: Callable[..., jax.Array]
    params: PyTree
    batches: PyTree | Sequence[PyTree]
    state: PyTree = None
    linearize: bool | None = None
    max_residual_bytes: int = LINEARIZE_MAX_BYTES

    def __post_init__(self):
        if not isinstance(self.batches, (list, tuple)):
            self.batches = [self.batches]
        self.weights = example_weights(self.batches)
        self.num_examples = sum(example_count(b) for b in self.batches)
        flat, self.unravel = ravel_pytree(self.params)
        self.dim, self.dtype = flat.size, flat.dtype
        self._sharding = getattr(jax.tree.leaves(self.params)[0], 'sharding', None)
        single = len(self.batches) == 1
        if self.linearize is None:
            args = (self.loss_fn, self.params, self.batches[0], self.state)
            self.linearize = single and _residual_bytes(*args) <= self.max_residual_bytes
        elif self.linearize and not single:
            raise ValueError('linearize=True needs a single batch')
        self.linearized = bool(self.linearize)
        self._linear = None
        self.num_hvps = 0

    def _weighted(self, fn) -> jax.Array:
        out = None
        for b, w in zip(self.batches, self.weights, strict=True):
            x = fn(b)
            x = x if w == 1.0 else x * jnp.asarray(w, x.dtype)
            out = x if out is None else out + x
        return out

    def hvp(self, v: jax.Array) -> jax.Array:
        """H v for a flat vector v (units: loss / param**2 times v)."""
        # Committed and uncommitted arguments are different jit cache entries: pin v to the
        # params' placement, or a vector from another computation recompiles the HVP.
        v = jax.device_put(v, self._sharding)
        self.num_hvps += 1
        if self.linearized:
            if self._linear is None:
                args = (self.loss_fn, self.params, self.batches[0], self.state)
                self._linear = _jitted(_linearize)(*args)
            return _jitted(_apply, False)(self._linear, v)
        return self._weighted(lambda b: _jitted(_hvp)(self.loss_fn, self.params, b, self.state, v))

    def gradient(self) -> jax.Array:
        """The flat gradient of the mean loss."""
        return self._weighted(
            lambda b: _jitted(_flat_grad)(self.loss_fn, self.params, b, self.state)
        )

    def loss(self) -> float:
        """The mean loss over all examples."""
        return float(
            self._weighted(lambda b: _jitted(_loss)(self.loss_fn, self.params, b, self.state))
        )

    def flatten(self, tree: PyTree) -> jax.Array:
        """A params-shaped pytree as a flat vector (the layout of `hvp`)."""
        return _ravel(tree)

    def unflatten(self, v: jax.Array) -> PyTree:
        """A flat vector as a params-shaped pytree."""
        return _unravel(v, self.params)

    def random(self, key: jax.Array, sampler: str = 'normal') -> jax.Array:
        """A flat random vector ('normal' or 'rademacher'), placed like the params."""
        return jax.device_put(random_vector(key, self.dim, self.dtype, sampler), self._sharding)

    # PyHessian's one-call interface, on the algorithms below.

    def eigenvalues(
        self, top_n: int = 1, tol: float = 1e-3, max_iter: int = 100, order: int = 40, seed: int = 0
    ) -> tuple[np.ndarray, list[PyTree]]:
        """The `top_n` algebraically largest eigenvalues (float64, descending) and their unit
        eigenvectors as params-shaped pytrees. `top_n=1`: `lambda_max` (power iteration to
        relative change `tol`, at most `max_iter` HVPs per run, as PyHessian's
        `eigenvalues()`); more: `top_eigenpairs` (`order` Lanczos steps; residuals there)."""
        key = jax.random.PRNGKey(seed)
        if top_n == 1:
            value, vector, _ = lambda_max(self.hvp, self.random(key), max_iter, tol)
            return np.array([value]), [self.unflatten(vector)]
        top = top_eigenpairs(self.hvp, self.random(key), max(order, top_n), top_n, key=key)
        return top['eigenvalues'], [self.unflatten(v) for v in top['vectors']]

    def trace(self, num_samples: int = 100, seed: int = 0) -> tuple[float, float]:
        """Hutchinson estimate of trace(H) from `num_samples` Rademacher HVPs, with its standard
        error (`hutchinson_trace`)."""
        key = jax.random.PRNGKey(seed)
        return hutchinson_trace(self.hvp, self.dim, key, num_samples, self.dtype)[:2]

    def density(
        self, order: int = 100, num_draws: int = 1, seed: int = 0, **kwargs
    ) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed eigenvalue density (grid, density; integrates to 1) from stochastic
        Lanczos quadrature: `num_draws` runs of `order` steps (`slq`, `spectral_density`,
        which takes `kwargs`: grid, sigma, num_grid)."""
        nodes, weights = slq(self.hvp, self.dim, jax.random.PRNGKey(seed), order, num_draws)
        return spectral_density(nodes, weights, **kwargs)


_ravel = jax.jit(lambda tree: ravel_pytree(tree)[0])
_unravel = jax.jit(lambda flat, like: ravel_pytree(like)[1](flat))


# ---------------------------------------------------------------------------------------------
# Small jitted vector helpers (fixed shapes: one compile per parameter count).


@jax.jit
def _unit(v):
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1.0)


@jax.jit
def _rayleigh(v, hv, shift):
    # (H - shift I) v and v^T (H - shift I) v for a unit v.
    hv = hv - shift * v
    return hv, jnp.dot(v, hv, precision=_HIGHEST)


@jax.jit
def _quotient(d, hd):
    return jnp.dot(d, hd, precision=_HIGHEST) / jnp.dot(d, d, precision=_HIGHEST)


@jax.jit
def _project_out(v, u):
    return v - jnp.dot(u, v, precision=_HIGHEST) * u


# ---------------------------------------------------------------------------------------------
# Power iteration.


def power_iteration(
    hvp: FlatHVP,
    v0: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-3,
    shift: float = 0.0,
) -> tuple[float, jax.Array, int]:
    """Dominant eigenpair of H - shift I by power iteration (PyHessian's `eigenvalues`).

    Returns the eigenvalue of largest MAGNITUDE of H - shift I, with its sign (so the eigenvalue
    of H is the result + shift), after stopping when the Rayleigh quotient q changes by
    < `tol` relative (|q_k - q_{k-1}| / (|q_{k-1}| + 1e-6), PyHessian's rule) or after
    `num_iters` HVPs. Convergence is geometric in |lambda_2 / lambda_1|; an unconverged quotient
    lies inside the spectrum.

    Returns:
      (eigenvalue of H - shift I, unit eigenvector (normalised H v, one step past the v of the
      quotient), number of HVPs).
    """
    if num_iters < 1:
        raise ValueError(f'num_iters={num_iters}: power iteration needs at least one HVP')
    q_prev, n, v = None, 0, v0
    while n < num_iters:
        v = _unit(v)
        hv, q = _rayleigh(v, hvp(v), shift)
        q, n = float(q), n + 1
        if q_prev is not None and abs(q - q_prev) / (abs(q_prev) + 1e-6) < tol:
            break
        q_prev, v = q, hv
    return q, _unit(hv), n


def lambda_max(
    hvp: FlatHVP,
    v0: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-3,
    v1: jax.Array | None = None,
) -> tuple[float, jax.Array, int]:
    """ALGEBRAIC largest eigenvalue of H by power iteration: the dominant eigenvalue mu, and if
    mu < 0 (negative curvature dominates) a second run on H - mu I, started from `v1` (default
    all ones) made orthogonal to the first eigenvector, finds the top.

    Returns:
      (lambda_max, unit eigenvector, HVPs used).
    """
    mu, vec, n = power_iteration(hvp, v0, num_iters, tol)
    if mu >= 0:
        return mu, vec, n
    v1 = jnp.ones_like(vec) if v1 is None else v1
    nu, top, m = power_iteration(hvp, _project_out(v1, vec), num_iters, tol, mu)
    return mu + nu, top, n + m


def lambda_max_min(
    hvp: FlatHVP, v0: jax.Array, v1: jax.Array, num_iters: int = 100, tol: float = 1e-3
) -> tuple[float, float, int]:
    """ALGEBRAIC largest and smallest eigenvalues of H by two power iterations.

    The first (from v0) finds the dominant eigenvalue mu, one end of the spectrum; the spectrum
    of H - mu I lies on one side of 0 with the other end as its dominant eigenvalue, which the
    second (from v1) finds. With lambda_min = -15 and lambda_max = 10 this returns (10, -15),
    never a magnitude. The shifted run converges slowly when the far end sits near a dense bulk
    (lambda_min of a trained net): `top_eigenpairs` (Lanczos) converges faster there.

    Returns:
      (lambda_max, lambda_min, HVPs used).
    """
    mu, _, n = power_iteration(hvp, v0, num_iters, tol)
    nu, _, m = power_iteration(hvp, v1, num_iters, tol, mu)
    # max/min rather than sign(mu) so an unconverged first run cannot swap the two ends.
    return max(mu, mu + nu), min(mu, mu + nu), n + m


def directional_curvature(hvp: FlatHVP, d: jax.Array) -> float:
    """d^T H d / d^T d: the curvature along `d` (eigenvalue units, independent of its length);
    `gradient_curvature` is the case d = g. A zero d gives NaN. One HVP."""
    return float(_quotient(d, hvp(d)))


def gradient_curvature(hessian: Hessian) -> float:
    """g^T H g / g^T g with g the gradient of the mean loss: the curvature along the step
    gradient descent takes. One gradient and one HVP."""
    return directional_curvature(hessian.hvp, hessian.gradient())


# ---------------------------------------------------------------------------------------------
# Trace.


def hutchinson_trace(
    hvp: FlatHVP,
    dim: int,
    key: jax.Array,
    num_samples: int,
    dtype: Any = jnp.float32,
    progress: str = '',
) -> tuple[float, float, np.ndarray]:
    """Hutchinson estimate of trace(H): the mean of z^T H z over Rademacher vectors z, one per
    key of `jax.random.split(key, num_samples)` (flat draws of length `dim`).

    Rademacher rather than Gaussian because the variance, 2 sum_{i != j} H_ij^2, has no diagonal
    term (Hutchinson 1990).

    Returns:
      (trace estimate, standard error = sample std / sqrt(num_samples) (NaN for one sample),
      the samples).
    """
    values = []
    start = time.perf_counter()
    for z_key in jax.random.split(key, num_samples):
        z = random_vector(z_key, dim, dtype, 'rademacher')
        values.append(float(jnp.dot(z, hvp(z), precision=_HIGHEST)))
        if progress and (len(values) % 5 == 0 or len(values) == num_samples):
            logging.info(
                '%s: trace sample %d/%d, %.1f s',
                progress, len(values), num_samples, time.perf_counter() - start,
            )  # fmt: skip
    values = np.array(values)
    stderr = values.std(ddof=1) / np.sqrt(num_samples) if num_samples > 1 else float('nan')
    return float(values.mean()), float(stderr), values


# ---------------------------------------------------------------------------------------------
# Per-layer (diagonal block) curvature.


def _key_str(entry: Any) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def layer_partition(params: PyTree) -> PyTree:
    """The default partition of a parameter tree: each leaf labelled by its parent container,
    e.g. params['001_block']['conv1']['kernel'] -> '001_block/conv1' (an array at the root is
    its own layer). Any params-shaped tree of labels works as a partition."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    labels = ['/'.join(_key_str(e) for e in (path[:-1] or path)) for path, _ in paths]
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def per_layer_lambda_max(
    hessian: Hessian,
    key: jax.Array,
    partition: PyTree | None = None,
    num_iters: int = 100,
    tol: float = 1e-3,
) -> dict[str, float]:
    """Algebraic top eigenvalue of each diagonal block of H: for block l, `lambda_max` of
    v -> P_l H P_l v (P_l zeroes the entries outside l), i.e. the Hessian with respect to that
    block's params with the others fixed. Every block HVP costs a full HVP.

    Args:
      hessian: the operator.
      key: PRNG key for the start vectors (one `fold_in` per block).
      partition: params-shaped tree of labels (`layer_partition(params)` by default); blocks
        are reported in order of first appearance.

    Returns:
      {label: lambda_max}.
    """
    partition = layer_partition(hessian.params) if partition is None else partition
    labels = jax.tree.leaves(partition)
    sizes = [x.size for x in jax.tree.leaves(hessian.params)]
    names = list(dict.fromkeys(labels))
    out = {}
    for b, name in enumerate(names):
        mask = np.concatenate(
            [np.full(n, label == name, np.float32) for n, label in zip(sizes, labels)]
        )
        mask = jax.device_put(jnp.asarray(mask, hessian.dtype), hessian._sharding)
        block_hvp = lambda v, m=mask: hessian.hvp(v * m) * m
        v0 = hessian.random(jax.random.fold_in(key, b)) * mask
        out[name] = lambda_max(block_hvp, v0, num_iters, tol, v1=mask)[0]
    return out
