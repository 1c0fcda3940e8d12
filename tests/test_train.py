import collections
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from resjax import checkpoint, data, optim, train
from resjax.metrics import read_metrics


def _params(state):
    return jax.tree.leaves(jax.device_get(state.params))


def test_digits_end_to_end_writes_workdir(digits_config, tmp_path):
    state = train.train_and_evaluate(digits_config, str(tmp_path))
    assert int(state.step) == 6
    rows = read_metrics(str(tmp_path))
    assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4, 6]
    assert [r['step'] for r in rows if 'eval/accuracy' in r] == [3, 6]
    for r in rows:
        assert all(np.isfinite(v) for v in r.values())
    with open(tmp_path / 'config.json') as f:
        assert json.load(f)['model']['depth'] == 8
    assert checkpoint.checkpoint_manager(str(tmp_path), read_only=True).all_steps() == [3, 6]
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


def test_resume_continues_as_the_uninterrupted_run(digits_config, tmp_path):
    digits_config.probes.every_steps = 5  # Step 5 probes after the resume: init recomputed.
    full = train.train_and_evaluate(digits_config, str(tmp_path / 'full'))
    digits_config.train.steps = 3
    train.train_and_evaluate(digits_config, str(tmp_path / 'split'))
    digits_config.train.steps = 6
    resumed = train.train_and_evaluate(digits_config, str(tmp_path / 'split'))
    for a, b in zip(_params(full), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = lambda d: {r['step']: r for r in read_metrics(str(tmp_path / d)) if 'train/loss' in r}
    full_rows, split_rows = rows('full'), rows('split')
    steps = [r['step'] for r in read_metrics(str(tmp_path / 'split')) if 'train/loss' in r]
    assert steps == [2, 3, 4, 6]  # 3: the first run's last step; nothing logged twice
    # Rows average the steps since the previous row; the first row after a resume covers only
    # the steps this process ran (step 4: one step), later ones are identical.
    assert full_rows[6]['train/loss'] == split_rows[6]['train/loss']
    assert full_rows[6]['train/accuracy'] == split_rows[6]['train/accuracy']
    probe = lambda d: next(  # noqa: E731
        r for r in read_metrics(str(tmp_path / d)) if r['step'] == 5 and 'init_distance/global' in r
    )
    assert probe('full')['init_distance/global'] == probe('split')['init_distance/global'] > 0
    for key in ('block_change/002_stage2_block1', 'descent_cos/001_stage1_block1'):
        assert probe('full')[key] == pytest.approx(probe('split')[key])
    assert -1 < probe('full')['descent_cos/001_stage1_block1'] < 1
    assert 'descent_cos/002_stage2_block1' not in probe('full')  # It changes the shape.


def test_digits_training_learns(digits_config, tmp_path):
    digits_config.train.steps = 40
    digits_config.train.log_every_steps = 10
    digits_config.train.eval_every_steps = 40
    digits_config.train.checkpoint_every_steps = 40
    train.train_and_evaluate(digits_config, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    losses = [r['train/loss'] for r in rows if 'train/loss' in r]
    assert losses[-1] < 0.5 * losses[0]
    assert [r['eval/accuracy'] for r in rows if 'eval/accuracy' in r][-1] > 0.6


def test_digits_split_is_deterministic_and_disjoint():
    a, b = data.load_digits(), data.load_digits()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    train_x, train_y, test_x, test_y = a
    assert len(train_x) + len(test_x) == 1797
    assert len(np.unique(test_y)) == 10
    rows = {r.tobytes() for r in train_x}
    assert sum(r.tobytes() in rows for r in test_x) < 5  # digits has a few duplicate images


def test_train_batches_depend_only_on_seed_and_step(digits_config):
    ds = data.create_dataset(digits_config, 0, 1)
    first = [next(it) for it in [ds.train_batches(0)] for _ in range(50)]
    again = ds.train_batches(47)
    for s in (47, 48, 49):
        np.testing.assert_array_equal(next(again)['label'], first[s]['label'])
    # An epoch of 1,438 is the first 1,438 examples of the stream (44 batches and 30 of the
    # 45th): each training example exactly once.
    train_x, train_y, _, _ = data.load_digits()
    key = lambda x, y: [im.tobytes() + bytes([int(c)]) for im, c in zip(x, y)]
    seen = [k for b in first[:45] for k in key(b['image'], b['label'])]
    assert len(train_x) == 1438
    assert collections.Counter(seen[:1438]) == collections.Counter(key(train_x, train_y))


def test_data_seed_keys_the_batches_and_none_is_seed(digits_config):
    # The init reads `seed` alone (steps.create_train_state); tests/test_study.py checks that
    # an LMC partner's config differs from its run's only in data_seed.
    n, b = 1438, digits_config.train.batch_size
    today = next(data.create_dataset(digits_config, 0, 1).train_batches(0))
    train_x, train_y, _, _ = data.load_digits()
    idx = np.random.default_rng([0, 0]).permutation(n)[:b]  # data_seed None: keyed by seed
    np.testing.assert_array_equal(today['image'], train_x[idx])
    np.testing.assert_array_equal(today['label'], train_y[idx])
    other = digits_config.copy_and_resolve_references()
    other.data_seed = 1
    moved = next(data.create_dataset(other, 0, 1).train_batches(0))
    assert not np.array_equal(moved['label'], today['label'])
    other.data_seed = 0  # = seed: the batches of a run without data_seed
    same = next(data.create_dataset(other, 0, 1).train_batches(0))
    np.testing.assert_array_equal(same['image'], today['image'])
    for bad in (-1, 2**31, True):
        c = digits_config.copy_and_resolve_references()
        c.data_seed = bad
        with pytest.raises(train.ConfigError, match='data_seed='):
            train.validate_config(c)


def test_each_process_gets_its_slice_of_the_global_batch(digits_config):
    one = next(data.create_dataset(digits_config, 0, 1).train_batches(5))
    halves = [next(data.create_dataset(digits_config, i, 2).train_batches(5)) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), one['image'])


def test_eval_covers_every_example_once(digits_config):
    digits_config.train.eval_batch_size = 100
    for count in (1, 2):
        batches = [
            list(data.create_dataset(digits_config, i, count).eval_batches()) for i in range(count)
        ]
        assert len({len(b) for b in batches}) == 1  # same number of batches on every process
        mask = np.concatenate([b['mask'] for bs in batches for b in bs])
        assert mask.sum() == 359 and len(mask) == 400


def test_piecewise_schedule_matches_the_paper():
    from resjax import config_lib

    c = config_lib.default_config().train
    lr = optim.learning_rate_schedule(c)
    assert np.isclose(lr(0), 0.1) and np.isclose(lr(31_999), 0.1)
    assert np.isclose(lr(32_000), 0.01) and np.isclose(lr(48_000), 0.001)
    c.warmup, c.warmup_steps = 'constant', 400  # the paper's ResNet-110 warm-up
    lr = optim.learning_rate_schedule(c)
    assert np.isclose(lr(399), 0.01) and np.isclose(lr(400), 0.1)
    assert np.isclose(lr(32_000), 0.01)


@pytest.mark.parametrize('mode', ['l2', 'decoupled'])
def test_weight_decay_modes(mode):
    from resjax import config_lib

    c = config_lib.default_config().train
    c.schedule, c.lr, c.momentum, c.weight_decay, c.weight_decay_mode = (
        'constant',
        0.1,
        0.9,
        0.5,
        mode,
    )
    tx = optim.create_optimizer(c)
    w = {'w': np.float32(2.0)}
    g = {'w': np.float32(0.0)}
    st = tx.init(w)
    u1, st = tx.update(g, st, w)
    u2, st = tx.update(g, st, w)  # same weights: isolates how decay enters the momentum
    assert np.isclose(u1['w'], -0.1 * 0.5 * 2.0)
    # l2: decay accumulates in the momentum buffer (u2 = u1 * 1.9); decoupled: it does not.
    assert np.isclose(u2['w'], u1['w'] * (1.9 if mode == 'l2' else 1.0))


BLOCK_TENSORFLOW = """
import sys

# As if not installed: `import` raises ImportError, importlib.util.find_spec returns None.
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
import jax
jax.config.update('jax_disable_most_optimizations', True)
from resjax import config_lib, train
c = config_lib.default_config()
c.dataset.name, c.dataset.augment = 'digits', 'none'
c.model.depth, c.model.width = 8, 0.25
c.train.steps = c.train.log_every_steps = c.train.eval_every_steps = 2
c.train.checkpoint_every_steps, c.train.batch_size, c.train.eval_batch_size = 2, 16, 120
train.train_and_evaluate(c, sys.argv[1])
assert not any(m.startswith('tensorflow') for m, v in sys.modules.items() if v)
print('OK')
"""


def test_digits_training_needs_no_tensorflow(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, '-c', BLOCK_TENSORFLOW, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith('OK'), out.stderr[-2000:]


@pytest.mark.parametrize('mode', ['stop', 'skip'])
def test_nonfinite_gradients_never_reach_the_parameters(digits_config, tmp_path, mode):
    digits_config.model.norm = 'none'
    digits_config.train.lr = 1e12  # diverges within a few steps
    digits_config.train.on_nonfinite = mode
    digits_config.train.steps = 8
    digits_config.train.checkpoint_every_steps = 1
    if mode == 'stop':
        with pytest.raises(train.NonFiniteError, match=r'at step \d+ .*layer \S+/'):
            train.train_and_evaluate(digits_config, str(tmp_path))
    else:
        state = train.train_and_evaluate(digits_config, str(tmp_path))
        assert int(state.skipped_steps) > 0
        rows = [r for r in read_metrics(str(tmp_path)) if 'train/skipped_steps' in r]
        assert rows[-1]['train/skipped_steps'] == int(state.skipped_steps)
    manager = checkpoint.checkpoint_manager(str(tmp_path), read_only=True)
    assert manager.all_steps(), 'the last good checkpoints are kept'
    for step in manager.all_steps():
        restored = manager.restore(step)
        for leaf in jax.tree.leaves(restored['params']):
            assert np.all(np.isfinite(leaf)), f'non-finite parameters saved at step {step}'


def test_format_seconds():
    from resjax.logs import format_seconds

    assert [format_seconds(s) for s in (0, 65.9, 3599, 3600, 2 * 3600 + 7 * 60 + 59)] == [
        '0m00s',
        '1m05s',
        '59m59s',
        '1h00m',
        '2h07m',
    ]


def test_importing_resjax_starts_no_backend():
    # A multi-host run calls jax.distributed.initialize after importing resjax; it fails if an
    # import already started the XLA backend (e.g. a module-level jit that asks for it).
    code = 'import resjax.train; from jax._src import xla_bridge as xb; assert not xb._backends'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
