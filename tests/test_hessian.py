import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax import data, models, train, xla
from resjax.metrics import read_metrics
from resjax.probes import curvature, hessian


def _tiny(norm='batch', n=6):
    # ~150 parameters: a dense Hessian is cheap. Two stages, so a strided block is included.
    model = models.ResNet(
        num_classes=3, stage_sizes=(1, 1), widths=(2, 3), norm=norm, dtype=jnp.float64
    )
    images, labels, _, _ = data.load_digits()
    batch = {'image': jnp.asarray(images[:n], jnp.float64), 'label': jnp.asarray(labels[:n] % 3)}
    variables = xla.run_once(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), batch['image'][:1]
    )
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
    # Non-trivial running statistics, so 'eval' mode differs from 'train' mode.
    variables['batch_stats'] = jax.tree.map(lambda x: x + 0.3, variables.get('batch_stats', {}))
    return model, variables, batch


def _dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda x: loss(unravel(x))))(flat), flat, unravel


# BN in train mode, the hardest case (batch statistics differentiated through). Eval mode and
# no BN are fixed affine maps: inspection's hessian test and test_curvature's dense checks of
# any loss (tiny MLP and CNN, unequal and masked batches) cover them.
def test_hvp_equals_dense_hessian_times_v():
    bn_mode = 'train'
    with jax.enable_x64(True):
        model, variables, batch = _tiny('batch')
        params = variables['params']
        loss = hessian.mean_loss_fn(model, variables.get('batch_stats', {}), batch, bn_mode)
        h, flat, unravel = _dense_hessian(loss, params)
        v = jax.random.normal(jax.random.PRNGKey(3), flat.shape, jnp.float64)
        hv = ravel_pytree(jax.jit(functools.partial(curvature.hvp, loss))(params, unravel(v)))[0]
        np.testing.assert_allclose(hv, h @ v, rtol=1e-8, atol=1e-10)
        # The sharpness probe's lambda_max is the algebraic top of the dense spectrum.
        probe = hessian.make_sharpness_probe(model, num_iters=500, tol=1e-9, bn_mode=bn_mode)
        u = jax.random.normal(jax.random.PRNGKey(5), flat.shape, jnp.float64)
        out, _ = probe(
            params,
            variables.get('batch_stats', {}),
            batch,
            unravel(jax.random.normal(jax.random.PRNGKey(4), flat.shape, jnp.float64)),
            update=unravel(3.0 * u),  # Curvature along a direction: its scale must not matter.
        )
        np.testing.assert_allclose(out['hessian/update_curvature'], u @ h @ u / (u @ u), rtol=1e-8)
        eigs = np.linalg.eigvalsh(np.asarray(h))
        np.testing.assert_allclose(out['hessian/lambda_max'], eigs[-1], rtol=1e-4)
        gf = ravel_pytree(jax.jit(jax.grad(loss))(params))[0]
        np.testing.assert_allclose(
            out['hessian/grad_curvature'], gf @ h @ gf / (gf @ gf), rtol=1e-8
        )


def test_train_and_eval_bn_modes_differ():
    with jax.enable_x64(True):
        model, variables, batch = _tiny()
        p, bs = variables['params'], variables['batch_stats']
        a = hessian.mean_loss_fn(model, bs, batch, 'train')(p)
        b = hessian.mean_loss_fn(model, bs, batch, 'eval')(p)
        assert abs(float(a) - float(b)) > 1e-3
    with pytest.raises(ValueError, match='bn_mode'):
        hessian.mean_loss_fn(model, bs, batch, 'frozen')


def test_sharpness_probe_rows_in_training(digits_config, tmp_path):
    digits_config.probes.every_steps = 0  # Only the sharpness probe: one compile fewer.
    digits_config.probes.hessian_every_steps = 2
    digits_config.probes.hessian_iters = 5
    digits_config.probes.hessian_batch = 'fixed'
    train.train_and_evaluate(digits_config, str(tmp_path))
    rows = [r for r in read_metrics(str(tmp_path)) if 'hessian/lambda_max' in r]
    assert [r['step'] for r in rows] == [0, 2, 4]
    for r in rows:
        assert np.isfinite(r['hessian/lambda_max']) and r['hessian/lambda_max'] > 0
        assert 1 <= r['hessian/num_hvps'] <= 2 * 5 + 1
        assert np.isclose(r['hessian/two_over_lr'], 2 / digits_config.train.lr)
    # Curvature along the last update: the update into steps 2 and 4 was kept, none before 0.
    assert [r['step'] for r in rows if 'hessian/update_curvature' in r] == [2, 4]


def test_sharpness_probe_trace_is_hutchinson_on_the_dense_hessian():
    with jax.enable_x64(True):
        model, variables, batch = _tiny()
        params, bs = variables['params'], variables['batch_stats']
        h, flat, unravel = _dense_hessian(hessian.mean_loss_fn(model, bs, batch), params)
        h = np.asarray(h)
        n, key = 64, jax.random.PRNGKey(7)
        probe = hessian.make_sharpness_probe(model, num_iters=3, trace_samples=n)
        out, _ = probe(params, bs, batch, unravel(jnp.ones_like(flat)), key=key)
        # Reference: z^T H z on the dense Hessian for the probe's n Rademacher vectors (one
        # flat draw per key).
        rademacher = lambda k: jax.random.rademacher(k, flat.shape, flat.dtype)
        zs = np.stack([rademacher(k) for k in jax.random.split(key, n)])
        assert set(np.unique(zs)) == {-1.0, 1.0}
        values = np.einsum('si,ij,sj->s', zs, h, zs)
        np.testing.assert_allclose(out['hessian/trace'], values.mean(), rtol=1e-8)
        np.testing.assert_allclose(
            out['hessian/trace_stderr'], values.std(ddof=1) / np.sqrt(n), rtol=1e-8
        )
        # And an unbiased estimate of tr(H): Var(z^T H z) = 2 sum_{i != j} H_ij^2.
        sd = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / n)
        assert abs(out['hessian/trace'] - np.trace(h)) < 4 * sd
        # Its n HVPs count in the cost, besides power iteration's (1 to 2 x 3) and g^T H g's.
        assert n + 2 <= out['hessian/num_hvps'] <= n + 1 + 2 * 3
