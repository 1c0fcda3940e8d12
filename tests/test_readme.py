"""The README as a new user reads it: its library example runs as pasted, a BatchNorm model
works the same in every library call, and a mistyped config key is one clean line."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from resjax import landscape
from resjax.probes import signals

ROOT = os.path.join(os.path.dirname(__file__), '..')


@pytest.fixture(scope='module')
def example():
    """The namespace left by the README's python code blocks, run in order as one program."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        blocks = re.findall(r'^```python\n(.*?)^```$', f.read(), re.S | re.M)
    assert blocks
    namespace = {'__name__': 'readme_example'}
    for block in blocks:
        exec(compile(block, 'README.md', 'exec'), namespace)
    return namespace


def test_library_example_runs_as_pasted(example):
    assert example['lam'] > 0 and example['trace'] > 0
    assert example['surface'].shape == (21, 21) and np.isfinite(example['surface']).all()
    np.testing.assert_allclose(example['density'].sum() * np.diff(example['support'])[0], 1, 1e-2)
    assert set(example['per_layer']) >= {'gsc/block0', 'grad_norm/global', 'probe/loss'}


def test_batchnorm_state_is_taken_alike_by_every_call(example):
    ns = example
    loss_fn, params, batch, state = ns['loss_fn'], ns['params'], ns['batch'], ns['state']
    # The landscape's origin is the loss the Hessian binds with the same state.
    np.testing.assert_allclose(ns['surface'][10, 10], ns['h'].loss(), rtol=1e-5)
    closed = lambda p, b: loss_fn(p, b, state)  # noqa: E731  (the closure form, same numbers)
    alphas = np.array([-0.5, 0.0, 0.5])
    with_state = landscape.slice_1d(loss_fn, params, ns['d1'], alphas, batch, state=state)
    np.testing.assert_allclose(
        with_state, landscape.slice_1d(closed, params, ns['d1'], alphas, batch), rtol=1e-6
    )
    ends = landscape.interpolation(
        loss_fn, params, params, np.array([0.0, 1.0]), batch, state=state
    )
    np.testing.assert_allclose(ends, ns['h'].loss(), rtol=1e-5)
    # signals.measure: `mutable=['batch_stats']`, which a BN model's training-mode apply needs
    # elsewhere, is accepted and changes nothing.
    args = (ns['model'], ns['variables'], (batch['x'],), lambda out: ns['ce'](out, batch['y']))
    mutable = signals.measure(*args, taps=['block0', 'block1'], train=True, mutable=['batch_stats'])
    assert set(mutable) == set(ns['per_layer'])
    for k, v in ns['per_layer'].items():
        np.testing.assert_allclose(mutable[k], v, rtol=1e-6, err_msg=k)


def test_a_mistyped_config_key_is_one_clean_line(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'), '--config',
         os.path.join(ROOT, 'configs', 'digits_resnet20.py:smoke'), '--workdir',
         str(tmp_path / 'run'), '--config.train.stpes=3'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == (
        "error: bad flag or config override: 'stpes' is not a config key (--config.train.stpes)."
        ' Did you mean "steps" instead of "stpes"? (config keys: --help)\n'
    )
    assert not (tmp_path / 'run').exists()
