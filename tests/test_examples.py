"""The examples/ models (not resjax's) through every probe, on tiny shapes, against a dense
`jax.hessian` and plain `jax.grad`."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax import data

EXAMPLES = pathlib.Path(__file__).parent.parent / 'examples'


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def batch():
    images, labels, _, _ = data.load_digits()
    return {'image': jnp.asarray(images[:6]), 'label': jnp.asarray(labels[:6])}


def _check(out, loss_fn, params, batch):
    flat, unravel = ravel_pytree(params)
    dense_h = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    dense = np.linalg.eigvalsh(np.asarray(dense_h, np.float64))
    assert np.abs(dense).max() > 1e-2  # a Hessian worth checking
    # Power iteration to 1e-3 relative change (PyHessian's rule): within 2% of the dense top.
    assert out['lambda_max'] == pytest.approx(dense.max(), rel=2e-2)
    assert abs(out['trace'] - dense.sum()) < 4 * out['trace_stderr']
    support, density = out['density']
    assert np.trapezoid(density, support) == pytest.approx(1.0, abs=1e-2)
    centre = out['surface'][len(out['surface']) // 2, len(out['surface']) // 2]
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)  # eager flax: slow
    assert centre == pytest.approx(float(loss), rel=1e-5)
    for layer in out['layers']:
        node = functools.reduce(lambda t, k: t[k], layer.split('/'), grads)
        expected = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(node)))
        assert out['signals'][f'grad_norm/{layer}'] == pytest.approx(expected, rel=1e-4)


def test_flax_cnn_example(batch):
    ex = _load('flax_cnn')
    model = ex.CNN(width=2)
    params = model.init(jax.random.PRNGKey(0), batch['image'][:1])['params']
    out = ex.probe(model, params, batch, jax.random.PRNGKey(1), grid=5, order=16)
    assert out['layers'] == ['conv1', 'conv2', 'head']
    _check(out, functools.partial(ex.mean_loss, model), params, batch)


def test_vit_tiny_example(batch):
    ex = _load('vit_tiny')
    model = ex.ViT(dim=4, depth=1, heads=1, patch=4, dropout=0.5)
    params = model.init(jax.random.PRNGKey(0), batch['image'][:1])['params']
    key = jax.random.PRNGKey(1)
    out = ex.probe(model, params, batch, key, grid=5, order=16)
    assert out['layers'][:3] == ['pos_embedding', 'embed', 'block0/ln1']  # forward, not sorted
    assert out['layers'][-2:] == ['ln', 'head']
    # The probes see the same fixed dropout mask as this loss (another mask: another loss).
    rngs = {'dropout': jax.random.fold_in(key, 0)}
    _check(out, functools.partial(ex.mean_loss, model, rngs=rngs), params, batch)
    assert out['signals']['gsc/output'] == pytest.approx(1.0)
    assert out['signals']['act_grad_norm/block0'] > 0
