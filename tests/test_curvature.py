"""Curvature probes against dense Hessians and quadratics with known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax.probes import curvature

# Three leaves in two layers, as a model's params would be: dim 8 + 4 = 12. Test data is numpy
# (conftest.py also turns XLA optimisations down): compiles dominate the runtime here.
PARAMS_LIKE = {
    'layer1': {'bias': np.zeros(2, np.float32), 'kernel': np.zeros((2, 3), np.float32)},
    'layer2': {'kernel': np.zeros(4, np.float32)},
}
DIM = 12
# Repeated (4, 4 and 0, 0) and negative eigenvalues; lambda_max = 10 dominates.
LAMS_POS = np.array([10.0, 4.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, -0.3, -1.0, -3.0, -6.0])
# Most negative eigenvalue has the largest magnitude.
LAMS_NEG = np.array([10.0, 4.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, -0.3, -1.0, -3.0, -15.0])


@pytest.fixture(autouse=True)
def highest_precision():
    # Float32 HVPs are compared with float64 references at ~1e-5: no TF32 passes on a GPU.
    with jax.default_matmul_precision('highest'):
        yield


def quadratic(lams, seed=0, dtype=np.float32):
    """(A, eigenvectors Q) with A = Q diag(lams) Q^T, Q a random orthogonal matrix."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(DIM, DIM)))
    return ((q * lams) @ q.T).astype(dtype), q


def quadratic_loss(params, batch):
    """0.5 x^T A x with x the flattened params pytree and A = batch['a'] (an argument, so every
    A shares one compile)."""
    x = ravel_pytree(params)[0]
    return 0.5 * x @ batch['a'] @ x


def on_quadratic(a):
    """The `Hessian` operator of the quadratic for A (its Hessian is A)."""
    return curvature.Hessian(quadratic_loss, PARAMS_LIKE, {'a': a})


def unravel(flat):
    return ravel_pytree(PARAMS_LIKE)[1](jnp.asarray(flat, jnp.float32))


def test_hvp_matches_dense_hessian_of_mlp(x64):
    rng = np.random.default_rng(0)
    params = {
        'dense1': {'kernel': rng.normal(size=(3, 5)), 'bias': rng.normal(size=5)},
        'dense2': {'kernel': rng.normal(size=(5, 4)), 'bias': rng.normal(size=4)},
    }
    batch = {'x': rng.normal(size=(7, 3)), 'y': rng.integers(0, 4, size=7)}
    flat, unravel_mlp = ravel_pytree(params)
    v = rng.normal(size=flat.shape)
    dense_h = jax.jit(jax.hessian(lambda f: mlp_loss(unravel_mlp(f), batch)))(flat)
    expected = dense_h @ v
    assert expected.dtype == jnp.float64 and np.abs(expected).max() > 1e-2
    for linearize in (True, False):
        h = curvature.Hessian(mlp_loss, params, batch, linearize=linearize)
        assert h.linearized == linearize
        np.testing.assert_allclose(h.hvp(v), expected, rtol=1e-10, atol=1e-12)
    assert curvature.Hessian(mlp_loss, params, batch).linearized  # auto: it fits in memory


def test_power_iteration_returns_signed_dominant_eigenvalue():
    a, q = quadratic(LAMS_NEG)
    lam, vec, n = curvature.power_iteration(
        on_quadratic(a).hvp, np.ones(DIM, np.float32), 500, 1e-6
    )
    np.testing.assert_allclose(lam, -15.0, rtol=1e-4)
    assert abs(np.dot(vec, q[:, -1])) == pytest.approx(1.0, abs=1e-4)
    assert 5 < n < 500  # stopped by tol, not by num_iters


@pytest.mark.parametrize('lams', [LAMS_POS, LAMS_NEG], ids=['pos_dominant', 'neg_dominant'])
def test_lambda_max_is_algebraic(lams):
    h = on_quadratic(quadratic(lams)[0])
    lam, vec, n = curvature.lambda_max(h.hvp, np.ones(DIM, np.float32), 1000, 1e-7)
    np.testing.assert_allclose(lam, 10.0, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, rtol=1e-5)
    assert n == h.num_hvps


@pytest.mark.parametrize('lams', [LAMS_POS, LAMS_NEG], ids=['pos_dominant', 'neg_dominant'])
def test_top_eigenpairs_are_the_algebraic_top_with_honest_residuals(lams):
    a, _ = quadratic(lams)
    h = on_quadratic(a)
    top = curvature.top_eigenpairs(h.hvp, h.random(jax.random.key(1)), order=DIM, k=4)
    np.testing.assert_allclose(top['eigenvalues'], [10.0, 4.0, 4.0, 2.0], atol=1e-4)
    np.testing.assert_allclose(top['lambda_min'], lams.min(), atol=1e-4)
    vectors = np.asarray(top['vectors'], np.float64)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(4), atol=1e-4)
    # The residuals are measured, ||A y - theta y||, so float32 rounding shows: > 0, and small.
    # The repeated 4.0 is found through a restart, which drops a beta below the breakdown
    # tolerance sqrt(eps) * ||A||: its Ritz vectors' residuals are up to that (~1e-3 here),
    # which the exact-arithmetic bound (0 for a split T) would hide.
    expected = np.linalg.norm(vectors @ a.T - top['eigenvalues'][:, None] * vectors, axis=1)
    breakdown_tol = np.sqrt(np.finfo(np.float32).eps) * np.abs(lams).max()
    assert (top['residuals'] > 0).all() and (top['residuals'] < breakdown_tol).all()
    np.testing.assert_allclose(top['residuals'], expected, atol=2e-6)
    assert top['num_hvps'] == h.num_hvps == DIM + 5


@pytest.mark.parametrize(
    'lams, extremes',
    [(LAMS_POS, (10.0, -6.0)), (LAMS_NEG, (10.0, -15.0)), (-LAMS_NEG, (15.0, -10.0))],
    ids=['pos_dominant', 'neg_dominant', 'pos_dominant_mirrored'],
)
def test_lambda_max_min_are_algebraic_extremes(lams, extremes):
    h = on_quadratic(quadratic(lams)[0])
    v0, v1 = h.random(jax.random.key(2)), h.random(jax.random.key(3))
    lam_max, lam_min, _ = curvature.lambda_max_min(h.hvp, v0, v1, 1000, 1e-7)
    np.testing.assert_allclose([lam_max, lam_min], extremes, rtol=1e-3)


def test_hvp_compiles_once_across_hessians():
    # A is an argument of the loss, so a new Hessian must reuse the compile and still give its
    # own spectrum.
    on_quadratic(quadratic(LAMS_POS)[0]).hvp(np.ones(DIM, np.float32))
    before = (
        curvature._jitted(curvature._linearize)._cache_size(),
        curvature._jitted(curvature._apply, False)._cache_size(),
    )
    for lams, top in ((LAMS_POS, 10.0), (2 * LAMS_NEG, 20.0), (3 * LAMS_POS, 30.0)):
        h = on_quadratic(quadratic(lams)[0])
        got = curvature.lambda_max(h.hvp, np.ones(DIM, np.float32), 1000, 1e-7)[0]
        np.testing.assert_allclose(got, top, rtol=1e-3)
    after = (
        curvature._jitted(curvature._linearize)._cache_size(),
        curvature._jitted(curvature._apply, False)._cache_size(),
    )
    assert after == before


def test_lanczos_full_order_reproduces_spectrum_with_multiplicity():
    # Only 10 distinct eigenvalues: the Krylov space goes invariant at step 10, and the second
    # copies of 4.0 and 0.0 only appear through the restart.
    h = on_quadratic(quadratic(LAMS_NEG)[0])
    alphas, betas, _ = curvature.lanczos(h.hvp, h.random(jax.random.key(3)), DIM)
    ritz = curvature.tridiagonal_eigh(alphas, betas)[0]
    assert ritz.dtype == np.float64
    np.testing.assert_allclose(ritz, np.sort(LAMS_NEG), atol=1e-4)


@pytest.mark.parametrize('rotated', [True, False], ids=['rotated', 'diagonal'])
@pytest.mark.parametrize('order', [8, DIM + 2], ids=['past_rank', 'past_dim'])
def test_lanczos_beyond_rank_has_no_nans_and_finds_nonzero_eigenvalues(order, rotated):
    # Diagonal A makes H q exactly 0 on the null space: without the restart that is 0/0, or
    # normalised rounding noise giving spurious Ritz values.
    lams = np.array([5.0, 3.0, -2.0] + [0.0] * (DIM - 3))
    a = quadratic(lams)[0] if rotated else np.diag(lams).astype(np.float32)
    v0 = np.random.default_rng(4).normal(size=DIM).astype(np.float32)
    alphas, betas, basis = curvature.lanczos(on_quadratic(a).hvp, v0, order)
    basis = np.asarray(basis)
    assert np.isfinite(alphas).all() and np.isfinite(betas).all() and np.isfinite(basis).all()
    assert (np.asarray(betas) == 0).any()  # breakdown was detected and restarted
    ritz = curvature.tridiagonal_eigh(alphas, betas)[0]
    np.testing.assert_allclose(ritz[np.abs(ritz) > 1e-3], [-2.0, 3.0, 5.0], rtol=1e-4)
    n_vec = min(order, DIM)
    np.testing.assert_allclose(basis[:n_vec] @ basis[:n_vec].T, np.eye(n_vec), atol=1e-5)


def test_hutchinson_trace_within_three_standard_errors():
    a, _ = quadratic(LAMS_POS)
    trace, stderr, values = curvature.hutchinson_trace(
        on_quadratic(a).hvp, DIM, jax.random.key(5), num_samples=400
    )
    assert values.shape == (400,)
    assert abs(trace - LAMS_POS.sum()) < 3 * stderr
    # Rademacher variance is 2 * sum_{i != j} A_ij^2; the reported error must track it.
    off_diagonal = a - np.diag(np.diag(a))
    np.testing.assert_allclose(stderr, np.sqrt(2 * (off_diagonal**2).sum() / 400), rtol=0.25)


def test_slq_density_normalised_with_correct_mass_and_trace():
    num_draws = 60
    h = on_quadratic(quadratic(LAMS_POS)[0])
    ritz, weights = curvature.slq(h.hvp, DIM, jax.random.key(6), order=DIM, num_draws=num_draws)
    grid, density = curvature.spectral_density(ritz, weights, num_grid=4000)
    assert grid.shape == density.shape == (4000,)
    assert ritz.shape == weights.shape == (num_draws, DIM)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9)
    # order = dim: every draw, restarts included, recovers the whole spectrum with multiplicity.
    np.testing.assert_allclose(ritz, np.tile(np.sort(LAMS_POS), (num_draws, 1)), atol=1e-4)
    # Each eigenvector gets mass 1/dim in expectation, so the repeated 4.0 gets 2/dim and the
    # default kernel (sigma ~ 0.013 here) leaves nothing between eigenvalues.
    near_four = np.abs(grid - 4.0) < 0.2
    np.testing.assert_allclose(np.trapezoid(density[near_four], grid[near_four]), 2 / DIM, rtol=0.3)
    assert density[np.argmin(np.abs(grid - 7.0))] < 1e-6
    # sum(weights * ritz) = q0^T A q0 per draw, whose mean is trace / dim.
    per_draw = (weights * ritz).sum(axis=1) * DIM
    stderr = per_draw.std(ddof=1) / np.sqrt(num_draws)
    assert abs(per_draw.mean() - LAMS_POS.sum()) < 3 * stderr


def test_directional_curvature_along_eigenvector_and_mixture():
    a, q = quadratic(LAMS_NEG)
    h = on_quadratic(a)
    # Lengths 3 and sqrt(2): the quotient must not depend on them.
    directions = [3.0 * q[:, i] for i in (0, 3, 11)] + [q[:, 0] + q[:, 11]]
    got = [curvature.directional_curvature(h.hvp, d.astype(np.float32)) for d in directions]
    np.testing.assert_allclose(got, [10.0, 2.0, -15.0, (10.0 - 15.0) / 2], rtol=1e-5, atol=1e-5)


def test_per_layer_lambda_max_matches_dense_blocks():
    a, _ = quadratic(LAMS_POS, seed=7)
    result = curvature.per_layer_lambda_max(on_quadratic(a), jax.random.key(8), None, 2000, 1e-8)
    assert list(result) == ['layer1', 'layer2']
    # ravel_pytree order: layer1/bias (2), layer1/kernel (6), layer2/kernel (4).
    for name, block in {'layer1': slice(0, 8), 'layer2': slice(8, 12)}.items():
        block_eigs = np.linalg.eigvalsh(a[block, block].astype(np.float64))
        np.testing.assert_allclose(result[name], block_eigs.max(), rtol=1e-3)


def test_layer_partition_joins_nested_paths():
    params = {'001_block': {'conv1': {'kernel': 0.0, 'bias': 0.0}, 'scale': 0.0}, 'head': 0.0}
    assert curvature.layer_partition(params) == {
        '001_block': {'conv1': {'kernel': '001_block/conv1', 'bias': '001_block/conv1'},
                      'scale': '001_block'},
        'head': 'head',
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Any model: a tiny MLP and a tiny CNN defined here, against a dense jax.hessian.


def mlp_loss(params, batch):
    """Mean cross-entropy of a tanh MLP, weighted by batch['mask'] if present."""
    h = jnp.tanh(batch['x'] @ params['dense1']['kernel'] + params['dense1']['bias'])
    return _mean_xent(h @ params['dense2']['kernel'] + params['dense2']['bias'], batch)


def cnn_loss(params, batch):
    """A 3x3 conv (2 channels, tanh) on 5x5x1 images, then a dense layer to 3 classes."""
    x = jax.lax.conv_general_dilated(
        batch['x'], params['conv']['kernel'], (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )  # fmt: skip
    h = jnp.tanh(x + params['conv']['bias']).reshape(x.shape[0], -1)
    return _mean_xent(h @ params['dense']['kernel'] + params['dense']['bias'], batch)


def _mean_xent(logits, batch):
    per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['y'][:, None], 1)[:, 0]
    mask = batch.get('mask', jnp.ones_like(per_example))
    return jnp.sum(per_example * mask) / jnp.sum(mask)


def tiny_model(kind, n, seed=0):
    """(loss_fn, float32 params, batch of n examples)."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    if kind == 'mlp':
        params = {
            'dense1': {'kernel': f32(3, 6), 'bias': f32(6)},
            'dense2': {'kernel': f32(6, 3), 'bias': f32(3)},
        }
        return mlp_loss, params, {'x': f32(n, 3), 'y': rng.integers(0, 3, n)}
    params = {
        'conv': {'kernel': 0.5 * f32(3, 3, 1, 2), 'bias': f32(2)},
        'dense': {'kernel': 0.3 * f32(50, 3), 'bias': f32(3)},
    }
    return cnn_loss, params, {'x': f32(n, 5, 5, 1), 'y': rng.integers(0, 3, n)}


def dense_hessian(loss_fn, params, batch):
    flat, unravel_p = ravel_pytree(params)
    with jax.enable_x64(True):
        x64 = lambda t: jax.tree.map(
            lambda x: np.asarray(x, np.float64 if x.dtype.kind == 'f' else x.dtype), t
        )
        f = lambda v: loss_fn(ravel_pytree(x64(params))[1](v), x64(batch))
        return np.asarray(jax.jit(jax.hessian(f))(np.asarray(flat, np.float64)))


@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_any_model_against_dense_hessian(kind):
    loss_fn, params, batch = tiny_model(kind, 8)
    dense = dense_hessian(loss_fn, params, batch)
    eigs = np.linalg.eigvalsh(dense)
    scale = np.abs(eigs).max()
    h = curvature.Hessian(loss_fn, params, batch)
    assert h.linearized
    lam, _, _ = curvature.lambda_max(h.hvp, h.random(jax.random.key(0)), 2000, 1e-9)
    np.testing.assert_allclose(lam, eigs[-1], rtol=1e-4)
    # Lanczos to full order: top 3, lambda_min, with residuals from an actual HVP (float32).
    top = curvature.top_eigenpairs(h.hvp, h.random(jax.random.key(1)), order=h.dim, k=3)
    np.testing.assert_allclose(top['eigenvalues'], eigs[::-1][:3], atol=1e-5 * scale)
    np.testing.assert_allclose(top['lambda_min'], eigs[0], atol=1e-5 * scale)
    assert (top['residuals'] > 0).all() and (top['residuals'] < 1e-4 * scale).all()
    assert 0 < top['lambda_min_residual'] < 1e-4 * scale
    # Within its residual of an exact eigenvalue (Bauer-Fike), with float32 slack.
    for theta, r in zip(top['eigenvalues'], top['residuals']):
        assert np.abs(eigs - theta).min() <= r + 1e-6 * scale
    trace, stderr, _ = curvature.hutchinson_trace(h.hvp, h.dim, jax.random.key(2), 100)
    assert abs(trace - np.trace(dense)) < 4 * stderr
    g = np.asarray(h.gradient(), np.float64)
    np.testing.assert_allclose(curvature.gradient_curvature(h), g @ dense @ g / (g @ g), rtol=1e-4)


def test_unequal_batches_give_the_hessian_of_the_example_weighted_mean():
    loss_fn, params, batch = tiny_model('cnn', 12, seed=1)
    # Batches of 3, 5 and 4 examples, the last with one masked out: a mean over 11 examples.
    pieces = [{k: x[a:b] for k, x in batch.items()} for a, b in ((0, 3), (3, 8), (8, 12))]
    pieces[2]['mask'] = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    kept = np.r_[0:10, 11]
    dense = dense_hessian(loss_fn, params, {k: x[kept] for k, x in batch.items()})
    h = curvature.Hessian(loss_fn, params, pieces)
    assert not h.linearized and h.num_examples == 11
    v = np.random.default_rng(2).normal(size=h.dim).astype(np.float32)
    np.testing.assert_allclose(h.hvp(v), dense @ v, rtol=1e-4, atol=1e-5 * np.abs(dense).max())
    # A sum over batches, or a mean of batch means, would differ.
    assert not np.allclose(np.asarray(h.hvp(v)) * 3, dense @ v, rtol=1e-2)
    lam = curvature.lambda_max(h.hvp, h.random(jax.random.key(3)), 2000, 1e-9)[0]
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(dense)[-1], rtol=1e-4)
    whole = curvature.Hessian(loss_fn, params, {k: x[kept] for k, x in batch.items()})
    np.testing.assert_allclose(h.loss(), whole.loss(), rtol=1e-6)
    np.testing.assert_allclose(h.gradient(), whole.gradient(), rtol=1e-5, atol=1e-7)


def test_pyhessian_style_calls_on_a_known_spectrum():
    a, q = quadratic(LAMS_POS)
    h = on_quadratic(a)
    top, vectors = h.eigenvalues(tol=1e-6, max_iter=500)
    np.testing.assert_allclose(top, [10.0], rtol=1e-4)
    assert abs(np.dot(ravel_pytree(vectors[0])[0], q[:, 0])) == pytest.approx(1.0, abs=1e-3)
    top3, vectors3 = h.eigenvalues(top_n=3, order=DIM)
    np.testing.assert_allclose(top3, [10.0, 4.0, 4.0], rtol=1e-4)
    assert len(vectors3) == 3 and jax.tree.structure(vectors3[2]) == jax.tree.structure(h.params)
    trace, stderr = h.trace(num_samples=40)
    assert abs(trace - LAMS_POS.sum()) < 4 * stderr and stderr > 0
    grid, density = h.density(order=DIM, num_draws=2)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-2)
    inside = (grid > LAMS_POS.min() - 1) & (grid < LAMS_POS.max() + 1)
    assert np.trapezoid(density[inside], grid[inside]) > 0.99
    # Its mean is the Rayleigh quotient of the draws: the mean eigenvalue, 0.93, in expectation.
    assert np.trapezoid(density * grid, grid) == pytest.approx(LAMS_POS.mean(), abs=1.5)
