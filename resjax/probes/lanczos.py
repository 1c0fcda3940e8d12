"""Lanczos with full reorthogonalisation, the top eigenpairs it gives, and stochastic Lanczos
quadrature (SLQ) with its smoothed spectral density.

Every function takes `hvp: v -> H v` on FLAT vectors (`curvature.Hessian.hvp`, or
`lambda v: a @ v` for a matrix) and runs on the host around one jitted HVP (`curvature`'s
docstring says why). Dots against the stored basis use `Precision.HIGHEST` (GPU default f32
matmuls are TF32); tridiagonal solves run on the host in float64. `curvature` re-exports
these names, so `curvature.lanczos` and `lanczos.lanczos` are the same function.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from absl import logging

FlatHVP = Callable[[jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_vector(key: jax.Array, dim: int, dtype: Any, sampler: str) -> jax.Array:
    """A flat random vector of length `dim`: 'rademacher' (+-1) or else standard normal."""
    # One draw of the flat vector: one threefry compiles far faster than one per leaf.
    sample = jax.random.rademacher if sampler == 'rademacher' else jax.random.normal
    return sample(key, (dim,), dtype)


@jax.jit
def _residual(y, hy, theta):
    return jnp.linalg.norm(hy - theta.astype(y.dtype) * y)


@jax.jit
def _lanczos_step(basis, i, w, h_norm, restart_key):
    # alpha_i = q_i . w; w orthogonalised twice against the whole basis ("twice is enough",
    # Parlett; unfilled rows are zero, so fixed shapes serve every step), which is also the
    # three-term recurrence; beta = ||w||. On breakdown (beta <= sqrt(eps) max ||H q||: the
    # Krylov space went invariant) restart from a random vector orthogonal to the basis and
    # store beta = 0, so T splits into blocks and repeated eigenvalues get their multiplicity.
    def orthogonalise(w):
        for _ in range(2):
            w = w - jnp.dot(basis.T, jnp.dot(basis, w, precision=_HIGHEST), precision=_HIGHEST)
        return w

    tol = float(np.sqrt(np.finfo(w.dtype).eps))
    h_norm = jnp.maximum(h_norm, jnp.linalg.norm(w))
    alpha = jnp.dot(basis[i], w, precision=_HIGHEST)
    w = orthogonalise(w)
    beta = jnp.linalg.norm(w)
    breakdown = beta <= tol * h_norm
    r = jax.random.normal(jax.random.fold_in(restart_key, i), w.shape, w.dtype)
    r_orth = orthogonalise(r)
    # Nothing left to span (order > dim): a zero row rather than amplified rounding noise.
    r_norm = jnp.linalg.norm(r_orth)
    r_keep = r_norm > tol * jnp.linalg.norm(r)
    restart = jnp.where(r_keep, r_orth / jnp.where(r_keep, r_norm, 1.0), 0.0)
    q_next = jnp.where(breakdown, restart, w / jnp.where(breakdown, 1.0, beta))
    return basis.at[i + 1].set(q_next), alpha, jnp.where(breakdown, 0.0, beta), h_norm


@functools.partial(jax.jit, static_argnums=1)
def _first_row(v0, order):
    return jnp.zeros((order, v0.size), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))


@jax.jit
def _last_alpha(basis, w):
    return jnp.dot(basis[-1], w, precision=_HIGHEST)


def lanczos(
    hvp: FlatHVP, v0: jax.Array, order: int, *, key: jax.Array | None = None, progress: str = ''
) -> tuple[np.ndarray, np.ndarray, jax.Array]:
    """`order` Lanczos steps (= HVPs) with full reorthogonalisation from start vector v0.

    Builds an orthonormal Krylov basis Q and the tridiagonal T = Q^T H Q (diagonal `alphas`,
    off-diagonal `betas`); Ritz values (eigenvalues of T) approximate H's extreme eigenvalues
    first. Breakdowns restart (see `_lanczos_step`); once the basis spans the whole space
    (order > dim) the extra rows are zero and add spurious zero Ritz values. Memory: `order`
    flat copies of the params. Logs progress every 10 steps if `progress` names the run.

    Returns:
      (alphas [order], betas [order - 1] as float64 numpy, basis [order, dim] on device).
    """
    key = jax.random.key(0) if key is None else key
    basis = _first_row(v0, order)
    alphas, betas = [], []
    h_norm = jnp.zeros((), basis.dtype)
    start = time.perf_counter()
    for i in range(order - 1):
        basis, alpha, beta, h_norm = _lanczos_step(basis, i, hvp(basis[i]), h_norm, key)
        alphas.append(float(alpha))
        betas.append(float(beta))
        if progress and (i + 1) % 10 == 0:
            elapsed = time.perf_counter() - start
            logging.info(
                '%s: Lanczos %d/%d, %.1f s, ETA %.0f s',
                progress, i + 1, order, elapsed, elapsed / (i + 1) * (order - i - 1),
            )  # fmt: skip
    alphas.append(float(_last_alpha(basis, hvp(basis[order - 1]))))
    return np.array(alphas), np.array(betas), basis


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric tridiagonal T(alphas, betas), on host in float64.

    Returns:
      (Ritz values ascending [m], eigenvectors of T as columns [m, m]). Squared first components
      are the Gauss quadrature weights of SLQ.
    """
    d, e = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    if len(d) == 1:
        return d, np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(d, e)


def ritz_and_weights(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 Ritz values and quadrature weights for a batch of tridiagonals.

    Args:
      alphas, betas: [num_draws, order] and [num_draws, order - 1].

    Returns:
      (ritz_values [num_draws, order], weights [num_draws, order]); each row of weights sums to 1.
    """
    alphas = np.asarray(alphas).reshape(-1, np.shape(alphas)[-1])
    betas = np.asarray(betas).reshape(alphas.shape[0], -1)
    pairs = [tridiagonal_eigh(a, b) for a, b in zip(alphas, betas, strict=True)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1][0] ** 2 for p in pairs])


@jax.jit
def _ritz_vectors(s, basis):
    return jnp.dot(s.astype(basis.dtype), basis, precision=_HIGHEST)


def top_eigenpairs(
    hvp: FlatHVP,
    v0: jax.Array,
    order: int,
    k: int = 1,
    *,
    key: jax.Array | None = None,
    progress: str = '',
) -> dict[str, Any]:
    """The k algebraically largest eigenpairs and lambda_min of H from `order` Lanczos steps.

    Residuals are honest: ||H y - theta y|| from an actual HVP on each returned Ritz vector y
    (k + 1 more HVPs), in float32 where the model is; the exact-arithmetic bound
    beta_m |s_mj| underflows to 0 there and means nothing. A Ritz value theta with residual r
    has an eigenvalue of H within r of it (Bauer-Fike for symmetric H).

    Returns:
      {'eigenvalues': [k] float64 descending, 'vectors': [k, dim] unit Ritz vectors,
       'residuals': [k], 'lambda_min', 'lambda_min_residual', 'ritz_values': all, ascending,
       'num_hvps'}.
    """
    alphas, betas, basis = lanczos(hvp, v0, order, key=key, progress=progress)
    theta, s = tridiagonal_eigh(alphas, betas)
    k = min(k, len(theta))
    picked = list(np.argsort(theta)[::-1][:k]) + [int(np.argmin(theta))]
    vectors = _ritz_vectors(jnp.asarray(s[:, picked].T), basis)
    residuals = [float(_residual(y, hvp(y), theta[j])) for y, j in zip(vectors, picked)]
    return {
        'eigenvalues': theta[picked[:k]],
        'vectors': vectors[:k],
        'residuals': np.array(residuals[:k]),
        'lambda_min': float(theta[picked[-1]]),
        'lambda_min_residual': residuals[-1],
        'ritz_values': theta,
        'num_hvps': order + k + 1,
    }


def slq(
    hvp: FlatHVP,
    dim: int,
    key: jax.Array,
    order: int,
    num_draws: int,
    dtype: Any = jnp.float32,
    progress: str = '',
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature nodes and weights (Ghorbani et al. 2019, PyHessian's
    `density`): `num_draws` Lanczos runs of `order` steps from Gaussian vectors; each gives the
    Gauss quadrature of H's spectral measure seen from a random direction, the eigenvalue
    density in expectation. mean over draws of sum(weights * ritz) * dim estimates trace(H).

    Returns:
      (ritz_values [num_draws, order], weights [num_draws, order]), for `spectral_density`.
    """
    alphas, betas = [], []
    for d, draw_key in enumerate(jax.random.split(key, num_draws)):
        label = progress and f'{progress} SLQ draw {d + 1}/{num_draws}'
        v0 = random_vector(draw_key, dim, dtype, 'normal')
        a, b, _ = lanczos(hvp, v0, order, key=jax.random.fold_in(draw_key, 1), progress=label)
        alphas.append(a)
        betas.append(b)
    return ritz_and_weights(np.stack(alphas), np.stack(betas))


def spectral_density(
    ritz_values: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
    num_grid: int = 10000,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed spectral density from SLQ nodes and weights, on host in float64.

    density(x) = mean over draws of sum_j w_j N(x; theta_j, sigma^2), then renormalised so its
    trapezoid integral over `grid` is 1 (mass a user grid cuts off is dropped, as in PyHessian).

    Args:
      ritz_values, weights: [num_draws, order], from `slq`.
      grid: eigenvalue grid; default `num_grid` points spanning the Ritz values +- 5 sigma.
      sigma: kernel width in eigenvalue units; default PyHessian's variance
        1e-5 * max(1, spread of the Ritz values).

    Returns:
      (grid, density) with density in 1 / eigenvalue units.
    """
    ritz_values = np.asarray(ritz_values, np.float64).reshape(-1, np.shape(ritz_values)[-1])
    weights = np.asarray(weights, np.float64).reshape(ritz_values.shape)
    lo, hi = ritz_values.min(), ritz_values.max()
    if sigma is None:
        sigma = float(np.sqrt(1e-5 * max(1.0, hi - lo)))
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_grid)
    grid = np.asarray(grid, np.float64)
    density = np.zeros_like(grid)
    # One draw at a time keeps the kernel matrix at num_grid x order.
    for nodes, w in zip(ritz_values, weights, strict=True):
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
        density += kernel @ w
    density /= np.trapezoid(density, grid)
    return grid, density
