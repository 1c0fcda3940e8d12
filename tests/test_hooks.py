import types

import pytest

from resjax import config_lib, hooks, train
from resjax.hooks import log
from resjax.metrics import read_metrics


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
    assert firsts == ['lr', 'record/after', 'record/before']


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
