"""resjax.landscape on losses that know nothing of resjax: a quadratic on a params pytree (answers
in closed form) and a two-layer MLP written here (answers from direct `loss_fn` calls)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax import landscape
from resjax.probes import curvature

# ---------------------------------------------------------------------------------------------
# A quadratic on a pytree: loss(x, batch) = mean_e 0.5 (x - t_e)^T A (x - t_e), Hessian A.

SHAPES = {'a': (3,), 'b': (2, 2)}
DIM = 7
EIGENVALUES = np.array([5.0, 3.0, 1.0, 0.5, -0.2, -1.0, -2.0])
_Q = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0]
A = (_Q * EIGENVALUES) @ _Q.T


def _tree(rng, scale=1.0):
    return {k: jnp.asarray(scale * rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def quadratic(params, batch):
    r = ravel_pytree(params)[0][None] - batch['t']
    return jnp.mean(0.5 * jnp.einsum('ei,ij,ej->e', r, jnp.asarray(A, jnp.float32), r))


def quadratic_exact(x, t):
    """The loss in float64 numpy at flat points x [..., DIM] for targets t [E, DIM]."""
    r = x[..., None, :] - t
    return np.mean(0.5 * np.einsum('...ei,ij,...ej->...e', r, A, r), -1)


def test_slices_of_a_quadratic_are_the_analytic_values():
    rng = np.random.default_rng(1)
    origin, d1, d2 = _tree(rng), _tree(rng), _tree(rng)
    t = rng.normal(size=(5, DIM))
    batch = {'t': jnp.asarray(t, jnp.float32)}
    o, u, v = _flat(origin), _flat(d1), _flat(d2)
    alphas = np.linspace(-1.5, 1.0, 7)
    line = landscape.slice_1d(quadratic, origin, d1, alphas, batch, chunk=3)
    want = quadratic_exact(o + alphas[:, None] * u, t)
    assert np.ptp(want) > 1  # Not flat: the comparison can fail.
    np.testing.assert_allclose(line, want, rtol=1e-5)
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-0.5, 2, 4)  # nx != ny: a transpose fails.
    grid = landscape.slice_2d(quadratic, origin, (d1, d2), xs, ys, batch, chunk=6)
    assert grid.shape == (5, 4) and grid.dtype == np.float64
    points = o + xs[:, None, None] * u + ys[None, :, None] * v
    np.testing.assert_allclose(grid, quadratic_exact(points, t), rtol=1e-5)


def test_convexity_of_quadratic_slices():
    # Along (q_i, q_j), eigenvectors of A, the slice's Hessian is diag(lambda_i, lambda_j).
    unravel = ravel_pytree(_tree(np.random.default_rng(0)))[1]
    q = [unravel(jnp.asarray(_Q[:, i], jnp.float32)) for i in range(DIM)]
    origin = _tree(np.random.default_rng(2))
    batch = {'t': jnp.zeros((1, DIM))}
    xs = np.linspace(-1, 1, 7)
    bowl = landscape.slice_2d(quadratic, origin, (q[0], q[1]), xs, xs, batch)
    s = landscape.convexity_summary(bowl, xs, xs)
    assert s['nonconvex_fraction'] == 0
    np.testing.assert_allclose([s['center_h_min'], s['center_h_max']], [3, 5], rtol=1e-3)
    np.testing.assert_allclose(s['mean_abs_ratio'], 3 / 5, rtol=1e-3)
    saddle = landscape.slice_2d(quadratic, origin, (q[0], q[6]), xs, xs, batch)
    s = landscape.convexity_summary(saddle, xs, xs)
    assert s['nonconvex_fraction'] == 1
    np.testing.assert_allclose([s['center_h_min'], s['center_h_max']], [-2, 5], rtol=1e-3)


def test_eigen_directions_of_a_known_quadratic():
    rng = np.random.default_rng(3)
    params = _tree(rng)
    batches = [{'t': jnp.asarray(rng.normal(size=(n, DIM)), jnp.float32)} for n in (2, 3)]
    h = curvature.Hessian(quadratic, params, batches)
    directions, top = landscape.eigen_directions(h, 2, jax.random.key(0), order=DIM)
    np.testing.assert_allclose(top['eigenvalues'], [5, 3], rtol=1e-4)
    for d, i in zip(directions, (0, 1)):
        assert jax.tree.structure(d) == jax.tree.structure(params)
        assert all(x.shape == y.shape for x, y in zip(jax.tree.leaves(d), jax.tree.leaves(params)))
        np.testing.assert_allclose(abs(_flat(d) @ _Q[:, i]), 1, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# A two-layer MLP on 4 features, 3 classes: loss and accuracy means over (masked) examples.


def mlp_params(seed):
    rng = np.random.default_rng(seed)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return {
        'hidden': {'w': f32(rng.normal(size=(4, 8)) / 2), 'b': f32(rng.normal(size=8) / 10)},
        'out': {'w': f32(rng.normal(size=(8, 3)) / 3), 'b': f32(np.zeros(3))},
    }


def mlp_metrics(params, batch):
    h = jnp.tanh(batch['x'] @ params['hidden']['w'] + params['hidden']['b'])
    logits = h @ params['out']['w'] + params['out']['b']
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['y'][:, None], 1)[:, 0]
    correct = (jnp.argmax(logits, -1) == batch['y']).astype(jnp.float32)
    mask = batch.get('mask', jnp.ones_like(nll))
    return {
        'loss': jnp.sum(nll * mask) / jnp.sum(mask),
        'accuracy': jnp.sum(correct * mask) / jnp.sum(mask),
    }


def mlp_loss(params, batch):
    return mlp_metrics(params, batch)['loss']


def _examples(seed, n):
    rng = np.random.default_rng(seed)
    return {
        'x': jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
        'y': jnp.asarray(rng.integers(0, 3, n)),
    }


@pytest.fixture(scope='module')
def mlp():
    params = mlp_params(0)
    data = _examples(1, 12)
    # Unequal batches: 3 examples, then 9 of which the last 2 are padding (mask 0).
    padded = {k: jnp.concatenate([v[3:], v[:2]]) for k, v in data.items()}
    batches = [
        {k: v[:3] for k, v in data.items()},
        {**padded, 'mask': jnp.asarray([1.0] * 9 + [0.0] * 2)},
    ]
    return params, data, batches


def test_grid_is_the_loss_at_the_points(mlp):
    params, data, _ = mlp
    d1 = landscape.random_direction(jax.random.key(2), params)
    d2 = landscape.random_direction(jax.random.key(3), params, biasbn='include')
    xs, ys = np.array([-1.0, 0.0, 0.5]), np.array([-0.5, 0.25])
    grid = landscape.slice_2d(mlp_metrics, params, (d1, d2), xs, ys, data, chunk=4)
    assert set(grid) == {'loss', 'accuracy'} and grid['loss'].shape == (3, 2)
    at = jax.jit(lambda x, y: mlp_metrics(jax.tree.map(lambda o, u, v: o + x * u + y * v,
                                                       params, d1, d2), data))  # fmt: skip
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            direct = at(x, y)
            np.testing.assert_allclose(grid['loss'][i, j], direct['loss'], rtol=1e-5)
            np.testing.assert_allclose(grid['accuracy'][i, j], direct['accuracy'], rtol=1e-6)
    assert np.ptp(grid['loss']) > 0.1


def test_unequal_batches_give_the_example_weighted_mean(mlp):
    params, data, batches = mlp
    d = landscape.random_direction(jax.random.key(4), params)
    alphas = np.linspace(-1, 1, 5)
    empty = {**batches[0], 'mask': jnp.zeros(3)}  # No examples: skipped, not NaN.
    split = landscape.slice_1d(mlp_metrics, params, d, alphas, [*batches, empty])
    whole = landscape.slice_1d(mlp_metrics, params, d, alphas, data)
    for k in ('loss', 'accuracy'):
        np.testing.assert_allclose(split[k], whole[k], rtol=1e-6)
    # The unweighted mean of the two batch means is another number: the test can fail.
    per_batch = [landscape.slice_1d(mlp_loss, params, d, alphas, b) for b in batches]
    assert np.max(np.abs((per_batch[0] + per_batch[1]) / 2 - whole['loss'])) > 1e-3


def test_interpolation_endpoints_are_exact(mlp):
    params, data, _ = mlp
    start, end = params, mlp_params(5)
    alphas = np.array([-0.5, 0.0, 0.3, 1.0, 1.5])

    def distances(p, batch):
        # Exactly 0 only at the exact endpoint: start + 1 * (end - start) would round.
        sq = lambda a, b: sum(jnp.sum((x - y) ** 2) for x, y in zip(*map(jax.tree.leaves, (a, b))))
        return {'to_start': sq(p, start), 'to_end': sq(p, end)}

    r = landscape.interpolation(distances, start, end, alphas, data)
    assert r['to_start'][1] == 0 and r['to_end'][3] == 0
    assert r['to_start'][3] > 0 and r['to_end'][1] > 0
    loss = landscape.interpolation(mlp_loss, start, end, alphas, data)
    np.testing.assert_allclose(loss[[1, 3]], [mlp_loss(start, data), mlp_loss(end, data)], 1e-6)
    assert abs(loss[1] - loss[3]) > 0.01


def test_gradient_direction_is_the_gradient_of_the_mean_loss(mlp):
    params, data, batches = mlp
    g = landscape.gradient_direction(curvature.Hessian(mlp_loss, params, batches))
    want = jax.jit(jax.grad(mlp_loss))(params, data)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    np.testing.assert_allclose(_flat(g), _flat(want), rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(_flat(want)) > 0.01
    scaled = landscape.scale_to_norm(g, 2.0)
    np.testing.assert_allclose(np.linalg.norm(_flat(scaled)), 2.0, rtol=1e-6)
