"""Curvature probes built on a Hessian-vector product (HVP): pure functions, pytree in, numbers out.

Everything takes an `hvp_fn: v -> H v` over a params-shaped pytree, so the same code serves the
full Hessian, a shifted one, or a diagonal block. Iterations run under `lax` control flow, so one
trace and one compile serve every iteration and every call of a jitted caller.

Device part (jittable) and host part (float64 numpy) are separate, so a probe is, e.g.::

    @jax.jit
    def tridiagonals(params, batch, key):
        hvp_fn = make_hvp(lambda p: mean_loss(p, batch), params)
        return lanczos_tridiagonals(hvp_fn, key, params, order=80, num_draws=4)

    grid, density = spectral_density(*ritz_and_weights(*tridiagonals(params, batch, key)))

Pass params as a jit ARGUMENT (not a closure) so later calls reuse the compile.

Units: eigenvalues are those of the Hessian of `loss_fn`, which callers make the MEAN loss over
a fixed probe batch (a sum loss scales every eigenvalue by the batch size). `loss_fn` must be
deterministic: no dropout, BatchNorm in eval mode or with batch statistics held fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
import scipy.linalg
from jax import lax
from jax.flatten_util import ravel_pytree

PyTree = Any
HVPFn = Callable[[PyTree], PyTree]

# Dots against stored vectors must not drop to TF32/bf16 passes on GPU (JAX's default f32 matmul
# precision there), or reorthogonalisation leaves O(1e-3) overlaps. Same choice as otu.tree_vdot.
_HIGHEST = lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Hessian-vector products.


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """Returns H v, H the Hessian of `loss_fn` at `params`, by forward-over-reverse AD.

    Args:
      loss_fn: params -> scalar; make it the MEAN loss over a fixed probe batch.
      params: the point at which the Hessian is taken.
      v: a pytree shaped like `params`.

    Returns:
      H v, shaped like `params`, in units of loss / param**2 * v.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def make_hvp(
    loss_fn: Callable[[PyTree], jax.Array], params: PyTree, *, linearize: bool = True
) -> HVPFn:
    """Returns `v -> H v` at fixed `params` (see `hvp` for units).

    With `linearize=True` the forward and backward passes run once, and each call only pushes a
    tangent through the stored residuals: XLA does not hoist the primal out of a loop around
    `hvp` by itself (docs/notes.md). The price is that the residuals of a full forward+backward
    pass stay live for the whole loop; `linearize=False` trades that speed back for the memory.
    """
    if linearize:
        _, hvp_fn = jax.linearize(jax.grad(loss_fn), params)
        return hvp_fn
    return lambda v: hvp(loss_fn, params, v)


def directional_curvature(hvp_fn: HVPFn, d: PyTree) -> jax.Array:
    """Returns the Rayleigh quotient d^T H d / d^T d: curvature of the loss along direction `d`.

    Units are those of an eigenvalue (loss / param**2), independent of the length of `d`; used
    along the gradient and along the last update. A zero `d` gives NaN (no direction).
    """
    return otu.tree_vdot(d, hvp_fn(d)) / otu.tree_vdot(d, d)


# ---------------------------------------------------------------------------------------------
# Power iteration.


def _normalise(v: PyTree) -> PyTree:
    # A zero vector (v in the null space, or H = 0) stays zero rather than becoming NaN.
    norm = otu.tree_norm(v)
    return otu.tree_scale(jnp.where(norm > 0, 1.0 / norm, 0.0).astype(norm.dtype), v)


def _project_out(v: PyTree, basis: PyTree | None) -> PyTree:
    """v minus its components along the rows of `basis` (stacked, orthonormal or zero rows)."""
    if basis is None:
        return v
    coeffs = jax.vmap(otu.tree_vdot, in_axes=(0, None))(basis, v)
    along = jax.tree.map(lambda u: jnp.tensordot(coeffs, u, axes=1, precision=_HIGHEST), basis)
    return otu.tree_sub(v, along)


def power_iteration(
    hvp_fn: HVPFn,
    v0: PyTree,
    num_iters: int = 100,
    tol: float = 1e-3,
    deflate: PyTree | None = None,
) -> tuple[jax.Array, PyTree, jax.Array]:
    """Dominant eigenpair of H by power iteration (PyHessian's `eigenvalues`).

    Power iteration converges to the eigenvalue of largest MAGNITUDE; it is returned with its
    sign, so it is lambda_max only when positive curvature dominates. For the algebraic extremes
    use `lambda_max_min`. Convergence is geometric in |lambda_2 / lambda_1|; if +lambda and
    -lambda tie in magnitude the iterate does not settle and the estimate is meaningless.

    Args:
      hvp_fn: v -> H v.
      v0: start vector (any nonzero length), shaped like params.
      num_iters: maximum number of HVPs.
      tol: stop when |q_k - q_{k-1}| / (|q_{k-1}| + 1e-6) < tol, q the Rayleigh quotient
        (PyHessian's rule and defaults).
      deflate: optional orthonormal vectors stacked on a leading axis (all-zero rows allowed),
        projected out of the iterate before every HVP, so the result is the dominant eigenpair
        of H restricted to their orthogonal complement.

    Returns:
      (eigenvalue, unit eigenvector, number of HVPs used).
    """
    v0 = _normalise(_project_out(v0, deflate))
    dtype = jnp.result_type(*jax.tree.leaves(v0))
    zero = jnp.zeros((), dtype)

    def not_converged(carry):
        i, _, q, q_prev = carry
        rel_change = jnp.abs(q - q_prev) / (jnp.abs(q_prev) + 1e-6)
        return (i < num_iters) & ((i < 2) | (rel_change >= tol))

    def step(carry):
        i, v, q, _ = carry
        v = _normalise(_project_out(v, deflate))
        hv = hvp_fn(v)
        return i + 1, hv, otu.tree_vdot(hv, v).astype(dtype), q

    num_hvps, hv, eigenvalue, _ = lax.while_loop(
        not_converged, step, (jnp.int32(0), v0, zero, zero)
    )
    # H v normalised is one step closer to the eigenvector than the v that gave the estimate.
    return eigenvalue, _normalise(_project_out(hv, deflate)), num_hvps


def top_k_eigenvalues(
    hvp_fn: HVPFn,
    key: jax.Array,
    params_like: PyTree,
    k: int,
    num_iters: int = 100,
    tol: float = 1e-3,
) -> tuple[jax.Array, PyTree, jax.Array]:
    """k dominant eigenpairs by power iteration with deflation (PyHessian's `eigenvalues(top_n)`).

    Eigenvalue j is the dominant one (largest MAGNITUDE, signed) of H on the orthogonal
    complement of eigenvectors 0..j-1, so the output is in order of decreasing |lambda|.

    Args:
      hvp_fn: v -> H v.
      key: PRNG key for the k random start vectors.
      params_like: pytree of arrays giving shapes and dtypes.
      k: number of eigenpairs (static).
      num_iters, tol: per eigenpair, as in `power_iteration`.

    Returns:
      (eigenvalues [k], eigenvectors stacked on a leading axis of size k, total HVPs used).
    """
    keys = jax.random.split(key, k)
    dtype = jnp.result_type(*jax.tree.leaves(params_like))
    vectors = jax.tree.map(lambda x: jnp.zeros((k, *x.shape), x.dtype), params_like)

    def find_next(j, carry):
        eigenvalues, vectors, total = carry
        v0 = otu.tree_random_like(keys[j], params_like)
        # Rows not yet found are zero, so projecting them out is a no-op.
        lam, vec, n = power_iteration(hvp_fn, v0, num_iters, tol, deflate=vectors)
        vectors = jax.tree.map(lambda s, x: s.at[j].set(x), vectors, vec)
        return eigenvalues.at[j].set(lam), vectors, total + n

    init = (jnp.zeros(k, dtype), vectors, jnp.int32(0))
    return lax.fori_loop(0, k, find_next, init)


def lambda_max_min(
    hvp_fn: HVPFn,
    key: jax.Array,
    params_like: PyTree,
    num_iters: int = 100,
    tol: float = 1e-3,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ALGEBRAIC largest and smallest eigenvalues of H by power iteration plus a shifted one.

    First power iteration finds the dominant eigenvalue mu (largest |lambda|, signed), which is
    one end of the spectrum. The spectrum of H - mu I then lies on one side of 0 with the other
    end of H's spectrum as its dominant eigenvalue, so a second power iteration on H - mu I finds
    it. A magnitude is therefore never reported as lambda_max: with lambda_min = -15 and
    lambda_max = 10 this returns (10, -15).

    Both ends are Rayleigh quotients, hence inside the spectrum: an unconverged run
    underestimates lambda_max and overestimates lambda_min. The shifted run converges at rate
    |lambda_2 - mu| / |lambda_end - mu|, slow when the far end sits near a dense bulk (lambda_min
    of a trained net); Lanczos (`lanczos_eigenvalues`, Ritz extremes) converges faster there at
    the cost of storing its basis.

    Args:
      hvp_fn: v -> H v.
      key: PRNG key for the two start vectors.
      params_like: pytree of arrays giving shapes and dtypes.
      num_iters, tol: per power iteration, as in `power_iteration`.

    Returns:
      (lambda_max, lambda_min, total HVPs used).
    """
    key_dominant, key_other = jax.random.split(key)
    mu, _, n_dominant = power_iteration(
        hvp_fn, otu.tree_random_like(key_dominant, params_like), num_iters, tol
    )
    shifted = lambda v: otu.tree_add_scale(hvp_fn(v), -mu, v)
    nu, _, n_other = power_iteration(
        shifted, otu.tree_random_like(key_other, params_like), num_iters, tol
    )
    other_end = mu + nu
    # max/min rather than sign(mu) so an unconverged first run cannot swap the two ends.
    return jnp.maximum(mu, other_end), jnp.minimum(mu, other_end), n_dominant + n_other


# ---------------------------------------------------------------------------------------------
# Lanczos and stochastic Lanczos quadrature.


def lanczos(
    hvp_fn: HVPFn,
    v0: PyTree,
    order: int,
    *,
    key: jax.Array | None = None,
    breakdown_tol: float | None = None,
) -> tuple[jax.Array, jax.Array, PyTree]:
    """`order` steps of Lanczos with full reorthogonalisation, from start vector `v0`.

    Builds an orthonormal basis Q of the Krylov space and the tridiagonal T = Q^T H Q with
    diagonal `alphas` and off-diagonal `betas`; Ritz values (eigenvalues of T) approximate H's
    extreme eigenvalues first. Each new vector is Gram-Schmidt orthogonalised against the whole
    basis twice ("twice is enough", Parlett), which removes the ghost eigenvalues of plain
    Lanczos. When the Krylov space becomes invariant (beta ~ 0: order > rank of H + 1, or
    repeated eigenvalues) the iteration restarts with a random vector orthogonal to the basis and
    stores beta = 0, so T splits into blocks whose eigenvalues are all eigenvalues of H; this is
    how repeated eigenvalues get their multiplicity. Once the basis spans the whole space
    (order > dim) further vectors are zero and add spurious zero Ritz values.

    The basis is preallocated as an (order, dim) matrix in the dtype of `v0`: memory is
    `order` copies of the params.

    Args:
      hvp_fn: v -> H v.
      v0: start vector (any nonzero length), shaped like params.
      order: number of Lanczos steps = number of HVPs (static).
      key: PRNG key for restart vectors; fixed default, as restarts are rare.
      breakdown_tol: restart when beta <= breakdown_tol * max ||H q||; default sqrt(machine eps).
        Dropping a beta moves Ritz values by at most beta.

    Returns:
      (alphas [order], betas [order - 1], basis stacked on a leading axis of size `order`).
    """
    flat0, unravel = ravel_pytree(v0)
    dtype = flat0.dtype
    key = jax.random.key(0) if key is None else key
    tol = float(np.sqrt(np.finfo(dtype).eps)) if breakdown_tol is None else breakdown_tol
    matvec = lambda q: ravel_pytree(hvp_fn(unravel(q)))[0]

    def orthogonalise(basis, w):
        # Unfilled rows of the basis are zero, so the full matrix product is safe at any step.
        for _ in range(2):
            w = w - jnp.dot(basis.T, jnp.dot(basis, w, precision=_HIGHEST), precision=_HIGHEST)
        return w

    def restart_vector(basis, i):
        r = jax.random.normal(jax.random.fold_in(key, i), flat0.shape, dtype)
        r_orth = orthogonalise(basis, r)
        norm = jnp.linalg.norm(r_orth)
        # Nothing left to span: return zero instead of amplifying rounding noise.
        keep = norm > tol * jnp.linalg.norm(r)
        return jnp.where(keep, r_orth / jnp.where(keep, norm, 1.0), 0.0)

    def step(i, carry):
        basis, alphas, betas, h_norm = carry
        q = basis[i]
        w = matvec(q)
        h_norm = jnp.maximum(h_norm, jnp.linalg.norm(w))
        alphas = alphas.at[i].set(jnp.dot(q, w, precision=_HIGHEST))
        # Orthogonalising against q_i and q_{i-1} is the three-term recurrence itself.
        w = orthogonalise(basis, w)
        beta = jnp.linalg.norm(w)
        breakdown = beta <= tol * h_norm
        q_next = lax.cond(
            breakdown,
            lambda: restart_vector(basis, i),
            lambda: w / jnp.where(breakdown, 1.0, beta),
        )
        betas = betas.at[i].set(jnp.where(breakdown, 0.0, beta))
        return basis.at[i + 1].set(q_next), alphas, betas, h_norm

    basis = jnp.zeros((order, flat0.size), dtype).at[0].set(flat0 / jnp.linalg.norm(flat0))
    init = (
        basis,
        jnp.zeros(order, dtype),
        jnp.zeros(max(order - 1, 0), dtype),
        jnp.zeros((), dtype),
    )
    basis, alphas, betas, _ = lax.fori_loop(0, order - 1, step, init)
    # The last step needs only alpha; doing it outside the loop keeps every index in bounds.
    q_last = basis[order - 1]
    alphas = alphas.at[order - 1].set(jnp.dot(q_last, matvec(q_last), precision=_HIGHEST))
    return alphas, betas, jax.vmap(unravel)(basis)


def lanczos_tridiagonals(
    hvp_fn: HVPFn,
    key: jax.Array,
    params_like: PyTree,
    order: int,
    num_draws: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Lanczos tridiagonals from `num_draws` Gaussian start vectors, one after another.

    The jittable device half of `lanczos_eigenvalues` and `slq_density`: `num_draws * order`
    HVPs, memory of one basis (the draws run under `lax.map`, and the bases are dropped).

    Returns:
      (alphas [num_draws, order], betas [num_draws, order - 1]).
    """

    def one_draw(draw_key):
        start_key, restart_key = jax.random.split(draw_key)
        v0 = otu.tree_random_like(start_key, params_like)
        alphas, betas, _ = lanczos(hvp_fn, v0, order, key=restart_key)
        return alphas, betas

    return lax.map(one_draw, jax.random.split(key, num_draws))


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric tridiagonal T(alphas, betas), on host in float64.

    Returns:
      (Ritz values ascending [order], first component of each unit eigenvector [order]). The
      squared first components are the Gauss quadrature weights of SLQ and sum to 1.
    """
    d = np.asarray(alphas, np.float64)
    e = np.asarray(betas, np.float64)
    eigenvalues, eigenvectors = scipy.linalg.eigh_tridiagonal(d, e)
    return eigenvalues, eigenvectors[0]


def ritz_and_weights(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host float64 Ritz values and quadrature weights for a batch of tridiagonals.

    Args:
      alphas, betas: [num_draws, order] and [num_draws, order - 1], from `lanczos_tridiagonals`.

    Returns:
      (ritz_values [num_draws, order], weights [num_draws, order]); each row of weights sums to 1.
    """
    alphas = np.asarray(alphas).reshape(-1, np.shape(alphas)[-1])
    betas = np.asarray(betas).reshape(alphas.shape[0], -1)
    pairs = [tridiagonal_eigh(a, b) for a, b in zip(alphas, betas, strict=True)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] ** 2 for p in pairs])


def lanczos_eigenvalues(
    hvp_fn: HVPFn, key: jax.Array, params_like: PyTree, order: int
) -> np.ndarray:
    """Ritz values (float64, ascending) of `order` Lanczos steps from one Gaussian start vector.

    The extremes converge to lambda_min and lambda_max of H (algebraic) well before the
    interior; with order = dim they are all the eigenvalues, with multiplicity. Runs the device
    part eagerly; for repeated probing jit `lanczos_tridiagonals` and call `ritz_and_weights`.
    """
    alphas, betas = lanczos_tridiagonals(hvp_fn, key, params_like, order)
    return ritz_and_weights(alphas, betas)[0][0]


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
      ritz_values, weights: [num_draws, order], from `ritz_and_weights`.
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


def slq_density(
    hvp_fn: HVPFn,
    key: jax.Array,
    params_like: PyTree,
    order: int,
    num_draws: int,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
    num_grid: int = 10000,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    PyHessian's `density`: `num_draws` Lanczos runs of `order` steps from Gaussian vectors; each
    gives Gauss quadrature nodes (Ritz values) and weights (squared first components) for the
    spectral measure of H seen from a random direction, which is the eigenvalue density in
    expectation. Sanity check: mean over draws of sum(weights * ritz_values) = mean q0^T H q0
    estimates trace(H) / dim.

    Returns:
      (grid, density, (ritz_values [num_draws, order], weights [num_draws, order])); see
      `spectral_density` for grid, sigma and normalisation.
    """
    alphas, betas = lanczos_tridiagonals(hvp_fn, key, params_like, order, num_draws)
    ritz_values, weights = ritz_and_weights(alphas, betas)
    grid, density = spectral_density(ritz_values, weights, grid, sigma, num_grid)
    return grid, density, (ritz_values, weights)


# ---------------------------------------------------------------------------------------------
# Trace.


def hutchinson_trace(
    hvp_fn: HVPFn,
    key: jax.Array,
    params_like: PyTree,
    num_samples: int,
    *,
    batch_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimate of trace(H) with Rademacher probes: mean of z^T H z.

    Rademacher rather than Gaussian probes because their variance, 2 * sum_{i != j} H_ij^2, has
    no diagonal term (Hutchinson 1990). Samples run under `lax.map`, `batch_size` at a time
    (vmapped) if given.

    Returns:
      (trace estimate, its standard error = sample std / sqrt(num_samples)); the standard error
      is NaN for num_samples = 1.
    """

    def sample(sample_key):
        z = otu.tree_random_like(sample_key, params_like, sampler=jax.random.rademacher)
        return otu.tree_vdot(z, hvp_fn(z))

    values = lax.map(sample, jax.random.split(key, num_samples), batch_size=batch_size)
    return values.mean(), values.std(ddof=1) / np.sqrt(num_samples)


# ---------------------------------------------------------------------------------------------
# Per-layer (diagonal block) curvature.


def _key_str(entry: Any) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def layer_names(params: PyTree) -> tuple[list[str], list[int]]:
    """Names of the layers of `params` and the layer index of each leaf (tree_leaves order).

    A layer is the set of arrays sharing a parent container, e.g. params['001_block']['conv1']
    holding 'kernel' and 'bias', named '001_block/conv1'. An array at the root is its own layer.
    """
    names: list[str] = []
    leaf_layer: list[int] = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = '/'.join(_key_str(e) for e in (path[:-1] or path))
        if name not in names:
            names.append(name)
        leaf_layer.append(names.index(name))
    return names, leaf_layer


def per_layer_lambda_max(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-3,
) -> dict[str, jax.Array]:
    """Dominant eigenvalue of each layer's diagonal block of the Hessian of `loss_fn`.

    For layer l this is power iteration on v -> P_l H P_l v, P_l zeroing every leaf outside l,
    i.e. on the Hessian of the loss with respect to that layer's params alone, other layers
    fixed. Like `power_iteration` it is the largest-MAGNITUDE eigenvalue with its sign (lambda_max
    whenever positive curvature dominates the block, the usual case for a layer of a net). Each
    HVP costs a full-network HVP; layers run one after another under `lax.map`, so compile time
    does not grow with depth.

    Args:
      loss_fn: params -> scalar MEAN loss over a fixed probe batch.
      params: nested dicts of arrays; see `layer_names` for what a layer is.
      key: PRNG key for the start vectors.
      num_iters, tol: as in `power_iteration`.

    Returns:
      {'001_block/conv1': 0-d array, ...}, jittable; `float()` each value on the host.
    """
    names, leaf_layer = layer_names(params)
    treedef = jax.tree.structure(params)
    hvp_fn = make_hvp(loss_fn, params)

    def restrict(v, layer):
        leaves = treedef.flatten_up_to(v)
        kept = [
            jnp.where(layer == lid, x, jnp.zeros_like(x))
            for x, lid in zip(leaves, leaf_layer, strict=True)
        ]
        return treedef.unflatten(kept)

    def block_lambda(layer):
        block_hvp = lambda v: restrict(hvp_fn(restrict(v, layer)), layer)
        v0 = restrict(otu.tree_random_like(jax.random.fold_in(key, layer), params), layer)
        return power_iteration(block_hvp, v0, num_iters, tol)[0]

    eigenvalues = lax.map(block_lambda, jnp.arange(len(names)))
    return {name: eigenvalues[i] for i, name in enumerate(names)}
