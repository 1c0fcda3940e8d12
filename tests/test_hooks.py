import types

import jax
import numpy as np
import pytest

from resjax import config_lib, hooks, train
from resjax.hooks import log
from resjax.metrics import read_metrics
from resjax.probes import angles


def _ctx(config):
    """The part of a hooks.Context that the hooks' constructors below read."""
    return types.SimpleNamespace(config=config)


def test_a_hook_is_due_every_n_steps_and_after_the_last():
    config = config_lib.default_config()
    config.train.steps, config.train.eval_every_steps = 10, 4
    evaluate = hooks.evaluate.Evaluate(_ctx(config), None)
    assert [s for s in range(11) if evaluate.due(s)] == [0, 4, 8, 10]
    # The probes describe the parameters before a step: none is due after the last one.
    assert not hooks.sharpness.Sharpness.at_last and not hooks.signals.SignalProbes.at_last


def test_hooks_off_by_config_are_not_built():
    config = config_lib.default_config()
    config.probes.every_steps = config.probes.hessian_every_steps = 0
    built = hooks.from_config(_ctx(config), None)
    try:
        assert [type(h) for h in built] == [
            hooks.log.TrainLog,
            hooks.evaluate.Evaluate,
            hooks.checkpoints.Checkpoint,
        ]
    finally:
        for h in built:
            h.close()


def test_rows_join_hooks_that_share_a_row_in_first_hook_order():
    hessian = types.SimpleNamespace(row=None, name='hessian')
    distance = types.SimpleNamespace(row='probe', name='init_distance')
    probe = types.SimpleNamespace(row=None, name='probe')
    done = [(hessian, {'h': 1}), (distance, {'d': 2}), (probe, {'p': 3})]
    assert hooks.rows(done) == [{'h': 1}, {'d': 2, 'p': 3}]


def _recorder(when_, calls):
    class Record(hooks.Hook):
        name = f'record_{when_}'
        every_key = 'train.log_every_steps'
        when = when_
        at_last = when_ == hooks.AFTER

        def run(self, state, step, data):
            calls.append(('run', when_, step, int(state.step)))
            return {f'record/{when_}': step}

        def observe(self, state, step, data):
            calls.append(('observe', when_, step, int(state.step), data.outputs is not None))

    return Record


def test_the_loop_runs_each_hook_at_its_point_of_the_step(digits_config, tmp_path, monkeypatch):
    calls = []
    recorders = (_recorder(hooks.BEFORE, calls), _recorder(hooks.AFTER, calls))
    monkeypatch.setattr(hooks, 'HOOKS', (*hooks.HOOKS, *recorders))
    digits_config.train.steps, digits_config.train.log_every_steps = 5, 2
    digits_config.probes.init_angle_every_steps = 2  # A probe added as one module.
    train.train_and_evaluate(digits_config, str(tmp_path))
    # BEFORE: due at 0, 2, 4 on the state at that step, observing every step after its run.
    # AFTER: due at 2, 4 and the last step, 5, on the state after the update; observing every
    # step once it is dispatched, with its outputs.
    before = [c for c in calls if c[1] == hooks.BEFORE]
    assert before == [
        *[('run', 'before', 0, 0), ('observe', 'before', 0, 0, False)],
        ('observe', 'before', 1, 1, False),
        *[('run', 'before', 2, 2), ('observe', 'before', 2, 2, False)],
        ('observe', 'before', 3, 3, False),
        *[('run', 'before', 4, 4), ('observe', 'before', 4, 4, False)],
    ]
    after = [c for c in calls if c[1] == hooks.AFTER]
    assert after == [
        ('observe', 'after', 1, 1, True),
        *[('observe', 'after', 2, 2, True), ('run', 'after', 2, 2)],
        ('observe', 'after', 3, 3, True),
        *[('observe', 'after', 4, 4, True), ('run', 'after', 4, 4)],
        *[('observe', 'after', 5, 5, True), ('run', 'after', 5, 5)],
    ]
    rows = read_metrics(str(tmp_path))
    assert [(r['step'], r['record/before']) for r in rows if 'record/before' in r] == [
        (0, 0),
        (2, 2),
        (4, 4),
    ]
    # Each AFTER hook writes its own row, after the train row of its step.
    firsts = [next(k for k in r if k != 'step') for r in rows if r['step'] == 4]
    assert firsts == ['lr', 'record/after', 'init_angle/000_stem/conv', 'record/before']
    turned = [(r['step'], r['init_angle/global']) for r in rows if 'init_angle/global' in r]
    assert [s for s, _ in turned] == [0, 2, 4] and turned[0][1] == 0
    assert all(0 < angle < 90 for _, angle in turned[1:])


@pytest.fixture
def clock(monkeypatch):
    ticks = iter([0.0, 0.0, 30.0, 31.0, 31.0, 41.0, 43.0, 43.0, 43.0])
    monkeypatch.setattr(log.time, 'perf_counter', lambda: next(ticks))


def test_throughput_leaves_compiling_steps_and_evals_out(clock):
    t = log.Throughput(0)  # t=0
    t.pause(0)  # Step 1 compiles: paused at 0 ...
    assert t.resume(1) == 30.0  # ... resumed at 30 s: 30 s of compile, untimed.
    assert t.eta(99) == '?'  # Nothing timed yet: no guess.
    assert t.rate(2) == 1.0  # Step 2 took 1 s.
    t.pause(12)  # Ten steps in 10 s, then an eval of 2 s ...
    t.resume(12)
    assert t.rate(12) == 1.0  # ... not counted.
    assert t.eta(100) == '1m40s'  # 100 steps at the run's timed 1 step/s.


def _tree(rng, out=4):
    return {
        'conv': {'kernel': rng.normal(size=(3, 3, 2, out)), 'bias': rng.normal(size=(out,))},
        'dense': {'kernel': rng.normal(size=(5, 3)), 'bias': rng.normal(size=(3,))},
        'bn': {'scale': rng.normal(size=(out,))},
    }


def _reference_angles(kernel, initial):
    """numpy float64: arccos of the cosine of each pair of normalised output filters."""
    a, b = kernel.reshape(-1, kernel.shape[-1]), initial.reshape(-1, initial.shape[-1])
    cos = np.sum(a * b, axis=0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_init_angle_matches_arccos_of_the_normalised_filters():
    rng = np.random.default_rng(0)
    params, initial = _tree(rng), _tree(rng)
    out = jax.device_get(angles.init_angle(params, initial))
    conv = _reference_angles(params['conv']['kernel'], initial['conv']['kernel'])
    dense = _reference_angles(params['dense']['kernel'], initial['dense']['kernel'])
    assert sorted(out) == ['init_angle/conv', 'init_angle/dense', 'init_angle/global']
    np.testing.assert_allclose(out['init_angle/conv'], conv.mean(), rtol=1e-5)
    np.testing.assert_allclose(out['init_angle/dense'], dense.mean(), rtol=1e-5)
    np.testing.assert_allclose(out['init_angle/global'], np.r_[conv, dense].mean(), rtol=1e-5)


def test_init_angle_is_0_for_the_same_tree_90_for_orthogonal_filters_and_scale_invariant():
    rng = np.random.default_rng(1)
    params = _tree(rng)
    same = jax.device_get(angles.init_angle(params, params))
    assert all(v == 0 for v in same.values()), same
    # Orthogonal filters: each column of an orthogonal matrix against the next one.
    q = np.linalg.qr(rng.normal(size=(18, 18)))[0]
    kernel = q[:, :4].reshape(3, 3, 2, 4)
    turned = jax.device_get(angles.filter_angles(kernel, np.roll(kernel, 1, axis=-1))[0])
    np.testing.assert_allclose(turned, 90.0, rtol=1e-5)
    # Scaling a filter (BN's invariance) or a whole layer changes no angle.
    scaled = jax.tree.map(np.copy, params)
    scaled['conv']['kernel'] = scaled['conv']['kernel'] * np.array([0.1, 1.0, 3.0, 50.0])
    scaled['dense']['kernel'] = 7.0 * scaled['dense']['kernel']
    initial = _tree(rng)
    a, b = (jax.device_get(angles.init_angle(t, initial)) for t in (params, scaled))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)
    # A small turn is resolved (arccos of a float32 cosine would round it to 0).
    tiny = jax.device_get(angles.filter_angles(kernel, kernel + 1e-5 * np.roll(kernel, 1, -1))[0])
    np.testing.assert_allclose(tiny, np.degrees(1e-5), rtol=1e-2)


def test_a_zero_filter_is_left_out_of_the_means():
    kernel = np.array([[1.0, 0.0], [0.0, 0.0]])  # filter 1 is zero
    initial = np.array([[1.0, 1.0], [1.0, 1.0]])
    angle, defined = jax.device_get(angles.filter_angles(kernel, initial))
    assert defined.tolist() == [True, False]
    out = jax.device_get(angles.init_angle({'d': {'kernel': kernel}}, {'d': {'kernel': initial}}))
    np.testing.assert_allclose(out['init_angle/d'], 45.0, rtol=1e-6)
    np.testing.assert_allclose(out['init_angle/global'], 45.0, rtol=1e-6)
