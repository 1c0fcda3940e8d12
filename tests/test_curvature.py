"""Curvature probes against dense Hessians and quadratics with known spectra."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax.probes import curvature

# Three leaves in two layers, as a model's params would be: dim 8 + 4 = 12. Test data is numpy
# and probes run under jit: eager JAX compiles every small op on first use, which dominated runtime
# (conftest.py also turns XLA optimisations down).
PARAMS_LIKE = {
    'layer1': {'bias': np.zeros(2, np.float32), 'kernel': np.zeros((2, 3), np.float32)},
    'layer2': {'kernel': np.zeros(4, np.float32)},
}
DIM = 12
# Repeated (4, 4 and 0, 0) and negative eigenvalues; lambda_max = 10 dominates.
LAMS_POS = np.array([10.0, 4.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, -0.3, -1.0, -3.0, -6.0])
# Most negative eigenvalue has the largest magnitude.
LAMS_NEG = np.array([10.0, 4.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, -0.3, -1.0, -3.0, -15.0])


def quadratic(lams, seed=0, dtype=np.float32):
    """(A, eigenvectors Q) with A = Q diag(lams) Q^T, Q a random orthogonal matrix."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(DIM, DIM)))
    return ((q * lams) @ q.T).astype(dtype), q


def quadratic_loss(a):
    """0.5 x^T A x with x the flattened params pytree."""

    def loss(params):
        x = ravel_pytree(params)[0]
        return 0.5 * x @ a @ x

    return loss


@functools.partial(jax.jit, static_argnames='probe')
def on_quadratic(a, *args, probe):
    """`probe(hvp_fn, params_like, *args)` on the quadratic for A, jitted with A an argument, so
    tests sharing a (module-level) probe share its compile."""
    return probe(curvature.make_hvp(quadratic_loss(a), PARAMS_LIKE), PARAMS_LIKE, *args)


def unravel(flat):
    return ravel_pytree(PARAMS_LIKE)[1](jnp.asarray(flat, jnp.float32))


def unstack(stacked, n):
    """Stacked pytree -> [n, dim] matrix of flattened vectors."""
    return np.stack([ravel_pytree(jax.tree.map(lambda x, i=i: x[i], stacked))[0] for i in range(n)])


def test_hvp_matches_dense_hessian_of_mlp(x64):
    rng = np.random.default_rng(0)
    params = {
        'dense1': {'kernel': rng.normal(size=(3, 5)), 'bias': rng.normal(size=5)},
        'dense2': {'kernel': rng.normal(size=(5, 4)), 'bias': rng.normal(size=4)},
    }
    x, y = rng.normal(size=(7, 3)), rng.integers(0, 4, size=7)

    def loss(p):
        h = jnp.tanh(x @ p['dense1']['kernel'] + p['dense1']['bias'])
        logits = h @ p['dense2']['kernel'] + p['dense2']['bias']
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    flat, unravel_mlp = ravel_pytree(params)
    v = rng.normal(size=flat.shape)

    @jax.jit
    def products(params, v):
        dense_h = jax.hessian(lambda f: loss(unravel_mlp(f)))(ravel_pytree(params)[0])
        v = unravel_mlp(v)
        hvps = (
            curvature.hvp(loss, params, v),
            curvature.make_hvp(loss, params)(v),
            curvature.make_hvp(loss, params, linearize=False)(v),
        )
        return dense_h @ ravel_pytree(v)[0], [ravel_pytree(h)[0] for h in hvps]

    expected, got = products(params, v)
    assert expected.dtype == jnp.float64 and np.abs(expected).max() > 1e-2
    for hv in got:
        np.testing.assert_allclose(hv, expected, rtol=1e-10, atol=1e-12)


def power_iteration_probe(hvp_fn, params_like, v0):
    return curvature.power_iteration(hvp_fn, v0, num_iters=500, tol=1e-6)


def test_power_iteration_returns_signed_dominant_eigenvalue():
    a, q = quadratic(LAMS_NEG)
    lam, vec, n = on_quadratic(a, unravel(np.ones(DIM)), probe=power_iteration_probe)
    np.testing.assert_allclose(lam, -15.0, rtol=1e-4)
    assert abs(np.dot(ravel_pytree(vec)[0], q[:, -1])) == pytest.approx(1.0, abs=1e-4)
    assert 5 < n < 500  # stopped by tol, not by num_iters


def top_k_probe(hvp_fn, params_like, key):
    return curvature.top_k_eigenvalues(hvp_fn, key, params_like, k=4, num_iters=1000, tol=1e-7)


@pytest.mark.parametrize('lams', [LAMS_POS, LAMS_NEG], ids=['pos_dominant', 'neg_dominant'])
def test_top_k_matches_spectrum_by_magnitude(lams):
    eigenvalues, vectors, _ = on_quadratic(quadratic(lams)[0], jax.random.key(1), probe=top_k_probe)
    expected = lams[np.argsort(-np.abs(lams), kind='stable')][:4]  # 4.0 twice
    np.testing.assert_allclose(eigenvalues, expected, rtol=1e-3)
    flat = unstack(vectors, 4)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-3)


def lambda_max_min_probe(hvp_fn, params_like, key):
    return curvature.lambda_max_min(hvp_fn, key, params_like, num_iters=1000, tol=1e-7)


@pytest.mark.parametrize(
    'lams, extremes',
    [(LAMS_POS, (10.0, -6.0)), (LAMS_NEG, (10.0, -15.0)), (-LAMS_NEG, (15.0, -10.0))],
    ids=['pos_dominant', 'neg_dominant', 'pos_dominant_mirrored'],
)
def test_lambda_max_min_are_algebraic_extremes(lams, extremes):
    lam_max, lam_min, _ = on_quadratic(
        quadratic(lams)[0], jax.random.key(2), probe=lambda_max_min_probe
    )
    np.testing.assert_allclose([lam_max, lam_min], extremes, rtol=1e-3)


def test_jitted_probe_compiles_once_across_hessians():
    # A is a jit argument, so a new Hessian must reuse the compile (at most one new entry if this
    # test runs alone) and still give its own spectrum.
    before = on_quadratic._cache_size()
    for lams, lam_max in ((LAMS_POS, 10.0), (2 * LAMS_NEG, 20.0), (3 * LAMS_POS, 30.0)):
        got = on_quadratic(quadratic(lams)[0], jax.random.key(9), probe=lambda_max_min_probe)
        np.testing.assert_allclose(got[0], lam_max, rtol=1e-3)
    assert on_quadratic._cache_size() - before <= 1


def test_lanczos_full_order_reproduces_spectrum_with_multiplicity():
    # Only 10 distinct eigenvalues: the Krylov space goes invariant at step 10, and the second
    # copies of 4.0 and 0.0 only appear through the restart.
    hvp_fn = curvature.make_hvp(quadratic_loss(jnp.asarray(quadratic(LAMS_NEG)[0])), PARAMS_LIKE)
    ritz = curvature.lanczos_eigenvalues(hvp_fn, jax.random.key(3), PARAMS_LIKE, order=DIM)
    assert ritz.dtype == np.float64
    np.testing.assert_allclose(ritz, np.sort(LAMS_NEG), atol=1e-4)


# One probe object per order, so the jit cache (keyed on the static probe) is shared.
LANCZOS_PROBES = {
    order: functools.partial(
        lambda hvp_fn, p, v0, order: curvature.lanczos(hvp_fn, v0, order), order=order
    )
    for order in (8, DIM + 2)
}


@pytest.mark.parametrize('rotated', [True, False], ids=['rotated', 'diagonal'])
@pytest.mark.parametrize('order', [8, DIM + 2], ids=['past_rank', 'past_dim'])
def test_lanczos_beyond_rank_has_no_nans_and_finds_nonzero_eigenvalues(order, rotated):
    # Diagonal A makes H q exactly 0 on the null space: without the restart that is 0/0, or
    # normalised rounding noise giving spurious Ritz values.
    lams = np.array([5.0, 3.0, -2.0] + [0.0] * (DIM - 3))
    a = quadratic(lams)[0] if rotated else np.diag(lams).astype(np.float32)
    v0 = unravel(np.random.default_rng(4).normal(size=DIM))
    alphas, betas, basis = on_quadratic(a, v0, probe=LANCZOS_PROBES[order])
    flat_basis = unstack(basis, order)
    assert np.isfinite(alphas).all() and np.isfinite(betas).all()
    assert np.isfinite(flat_basis).all()
    assert (np.asarray(betas) == 0).any()  # breakdown was detected and restarted
    ritz = curvature.tridiagonal_eigh(alphas, betas)[0]
    np.testing.assert_allclose(ritz[np.abs(ritz) > 1e-3], [-2.0, 3.0, 5.0], rtol=1e-4)
    n_vec = min(order, DIM)
    gram = flat_basis[:n_vec] @ flat_basis[:n_vec].T
    np.testing.assert_allclose(gram, np.eye(n_vec), atol=1e-5)


def hutchinson_probe(hvp_fn, params_like, key):
    return curvature.hutchinson_trace(hvp_fn, key, params_like, num_samples=400)


def test_hutchinson_trace_within_three_standard_errors():
    a, _ = quadratic(LAMS_POS)
    trace, stderr = on_quadratic(a, jax.random.key(5), probe=hutchinson_probe)
    assert abs(trace - LAMS_POS.sum()) < 3 * stderr
    # Rademacher variance is 2 * sum_{i != j} A_ij^2; the reported error must track it.
    off_diagonal = a - np.diag(np.diag(a))
    np.testing.assert_allclose(stderr, np.sqrt(2 * (off_diagonal**2).sum() / 400), rtol=0.25)


def test_slq_density_normalised_with_correct_mass_and_trace():
    num_draws = 300
    hvp_fn = curvature.make_hvp(quadratic_loss(jnp.asarray(quadratic(LAMS_POS)[0])), PARAMS_LIKE)
    grid, density, (ritz, weights) = curvature.slq_density(
        hvp_fn, jax.random.key(6), PARAMS_LIKE, order=DIM, num_draws=num_draws, num_grid=4000
    )
    assert grid.shape == density.shape == (4000,)
    assert ritz.shape == weights.shape == (num_draws, DIM)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9)
    # order = dim: every draw, restarts included, recovers the whole spectrum with multiplicity.
    np.testing.assert_allclose(ritz, np.tile(np.sort(LAMS_POS), (num_draws, 1)), atol=1e-4)
    # Each eigenvector gets mass 1/dim in expectation, so the repeated 4.0 gets 2/dim and the
    # default kernel (sigma ~ 0.013 here) leaves nothing between eigenvalues.
    near_four = np.abs(grid - 4.0) < 0.2
    np.testing.assert_allclose(np.trapezoid(density[near_four], grid[near_four]), 2 / DIM, rtol=0.2)
    assert density[np.argmin(np.abs(grid - 7.0))] < 1e-6
    # sum(weights * ritz) = q0^T A q0 per draw, whose mean is trace / dim.
    per_draw = (weights * ritz).sum(axis=1) * DIM
    stderr = per_draw.std(ddof=1) / np.sqrt(num_draws)
    assert abs(per_draw.mean() - LAMS_POS.sum()) < 3 * stderr


def directional_probe(hvp_fn, params_like, directions):
    return [curvature.directional_curvature(hvp_fn, d) for d in directions]


def test_directional_curvature_along_eigenvector_and_mixture():
    a, q = quadratic(LAMS_NEG)
    # Lengths 3 and sqrt(2): the quotient must not depend on them.
    directions = [unravel(3.0 * q[:, i]) for i in (0, 3, 11)] + [unravel(q[:, 0] + q[:, 11])]
    got = on_quadratic(a, directions, probe=directional_probe)
    np.testing.assert_allclose(got, [10.0, 2.0, -15.0, (10.0 - 15.0) / 2], rtol=1e-5, atol=1e-5)


def test_per_layer_lambda_max_matches_dense_blocks():
    a, _ = quadratic(LAMS_POS, seed=7)

    @jax.jit
    def probe(a, params, key):
        return curvature.per_layer_lambda_max(
            quadratic_loss(a), params, key, num_iters=2000, tol=1e-8
        )

    result = probe(a, PARAMS_LIKE, jax.random.key(8))
    assert sorted(result) == ['layer1', 'layer2']
    # ravel_pytree order: layer1/bias (2), layer1/kernel (6), layer2/kernel (4).
    for name, block in {'layer1': slice(0, 8), 'layer2': slice(8, 12)}.items():
        block_eigs = np.linalg.eigvalsh(a[block, block].astype(np.float64))
        dominant = block_eigs[np.argmax(np.abs(block_eigs))]
        np.testing.assert_allclose(float(result[name]), dominant, rtol=1e-3)


def test_layer_names_join_nested_paths():
    params = {'001_block': {'conv1': {'kernel': 0.0, 'bias': 0.0}, 'scale': 0.0}, 'head': 0.0}
    names, leaf_layer = curvature.layer_names(params)
    assert names == ['001_block/conv1', '001_block', 'head']
    assert leaf_layer == [0, 0, 1, 2]
