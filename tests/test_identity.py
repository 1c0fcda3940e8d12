"""The identity-regression experiment (resjax/identity.py): its stacks, targets, measures and
rule, against direct computations; one tiny end-to-end run."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from resjax import config_lib, identity, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _features(n=64, c=4, seed=0):
    """Non-negative NHWC features, as a ReLU leaves them."""
    return np.maximum(np.random.default_rng(seed).normal(size=(n, 6, 6, c)), 0).astype(np.float32)


def test_off_dirac_is_zero_at_a_scaled_dirac_kernel_and_near_one_at_random():
    c = 8
    dirac = np.asarray(models.dirac_kernel((3, 3, c, c))) * np.linspace(0.5, 2, c)
    rand = np.random.default_rng(0).normal(size=(3, 3, c, c))
    out = identity.off_dirac({'a': {'kernel': jnp.asarray(np.stack([dirac, rand]))}})
    assert float(out[0]) == pytest.approx(0.0, abs=1e-6)
    # Of 9 c^2 entries, c are on the diagonal: the expected fraction off it is 1 - 1/(9c).
    assert float(out[1]) == pytest.approx(1 - 1 / (9 * c), abs=0.02)


def test_dirac_control_is_the_identity_at_init_and_he_init_is_not():
    x = _features()
    for kind in ('plain_dirac', 'plain', 'residual'):
        v = identity.init_stack(kind, 3, x, seed=0)
        y = identity.Stack('plain' if kind == 'plain_dirac' else kind, 3).apply(
            v, jnp.asarray(x), train=False
        )
        err = float(jnp.max(jnp.abs(y - x)))
        if kind == 'plain_dirac':
            assert err < 1e-4
        else:
            assert err > 0.1


def test_targets_have_the_stated_norms():
    x, xt = _features(), _features(16, seed=1)
    ys = identity.targets(x, xt, delta=0.1, seed=0)
    norm = lambda a: np.sqrt(np.sum(np.square(a, dtype=np.float64)))  # noqa: E731
    assert ys['identity'][0] is x
    assert norm(ys['near_identity'][0] - x) / norm(x) == pytest.approx(0.1, rel=1e-4)
    assert norm(ys['random'][0]) == pytest.approx(norm(x), rel=1e-4)
    assert np.all(ys['random'][0] >= 0)  # A ReLU block's output: representable by a plain one.


def test_train_stack_errors_match_a_direct_computation_and_divergence_is_nan():
    x, xt = _features(64), _features(16, seed=1)
    ys = identity.targets(x, xt, delta=0.1, seed=0)
    out = identity.train_stack('residual', 1, x, xt, ys, (0.05, 1e4), (0,), 6, 16, 3)
    assert out['steps'] == [0, 3, 6]
    rows = {(r['target'], r['lr']): r for r in out['runs']}
    assert len(rows) == 6
    # Step 0 is the init, evaluated in eval mode: recompute it directly.
    v = identity.init_stack('residual', 1, x, seed=0)
    f = identity.Stack('residual', 1).apply(v, jnp.asarray(x), train=False)
    y = ys['random'][0]
    want = float(jnp.sum((f - y) ** 2) / jnp.sum(jnp.asarray(y) ** 2))
    assert rows[('random', 0.05)]['train'][0] == pytest.approx(want, rel=1e-4)
    assert rows[('identity', 0.05)]['train'][-1] < rows[('identity', 0.05)]['train'][0]
    assert np.isnan(rows[('identity', 1e4)]['train'][-1])


HOLDS, FAILS = (f'the identity-as-zero prediction {v}' for v in ('holds', 'fails'))


def _rows(plain, residual, seeds=(0, 1)):
    """Synthetic rows: the final training error of each stack per target, per seed."""
    out = []
    for s in seeds:
        for t in identity.TARGETS:
            for kind, errs in (('plain', plain), ('residual', residual)):
                e = errs[t] * (1 + 0.1 * s)
                out.append({'stack': kind, 'depth': 9, 'target': t, 'seed': s, 'lr': 0.1,
                            'train': [1.0, e]})  # fmt: skip
    return out


@pytest.mark.parametrize(
    'plain, residual, verdict',
    [
        # 3 decades worse at (i) and (ii), equal at (iii): the identity-as-zero prediction.
        ({'identity': 1e-1, 'near_identity': 1e-1, 'random': 1e-2},
         {'identity': 1e-4, 'near_identity': 1e-4, 'random': 1e-2}, HOLDS),
        # No worse at the identity.
        ({'identity': 1e-4, 'near_identity': 1e-1, 'random': 1e-2},
         {'identity': 1e-4, 'near_identity': 1e-4, 'random': 1e-2}, FAILS),
        # Worse everywhere: harder to train, not harder at the identity.
        ({'identity': 1e-1, 'near_identity': 1e-1, 'random': 1e-1},
         {'identity': 1e-4, 'near_identity': 1e-4, 'random': 1e-4}, FAILS),
        # Exactly one decade at (ii): within the rule's margin on neither side.
        ({'identity': 1e-1, 'near_identity': 1e-3, 'random': 1e-2},
         {'identity': 1e-4, 'near_identity': 1e-4, 'random': 1e-2}, 'undecided'),
    ],
)  # fmt: skip
def test_rule_gives_each_verdict(plain, residual, verdict):
    assert identity.verdict(_rows(plain, residual), 9)['verdict'] == verdict


def test_rule_with_one_seed_is_provisional_and_counts_the_seed_spread():
    plain = {'identity': 1e-1, 'near_identity': 1e-1, 'random': 1e-2}
    residual = {'identity': 1e-4, 'near_identity': 1e-4, 'random': 1e-2}
    one = identity.verdict(_rows(plain, residual, seeds=(0,)), 9)['verdict']
    assert one == 'the identity-as-zero prediction holds; provisional: one seed'
    # Seeds 2 decades apart at (ii) for the plain stack: a 2-decade spread swallows the gap.
    rows = _rows(plain, residual)
    for r in rows:
        if (r['stack'], r['target'], r['seed']) == ('plain', 'near_identity', 1):
            r['train'] = [1.0, 1e-5]
    assert identity.verdict(rows, 9)['verdict'] == 'undecided'


def _base():
    c = config_lib.default_config()
    c.dataset.name = 'synthetic'
    c.dataset.image_shape = (8, 8, 3)
    c.dataset.num_train_examples = 64
    c.model.depth = 8
    c.model.width = 0.25
    c.train.eval_batch_size = 64
    return c


def _config(**identity_keys):
    c = _base()
    c.identity = {
        'source': '', 'stage': 2, 'examples': 64, 'eval_examples': 32, 'depths': (1,),
        'targets': identity.TARGETS, 'stacks': ('plain', 'residual'), 'delta': 0.1,
        'lrs': (0.1,), 'seeds': (0,), 'steps': 4, 'batch': 16, 'eval_every': 2,
    }  # fmt: skip
    c.identity.update(identity_keys)
    return c


def test_features_enter_the_stage_of_a_trained_source(tmp_path):
    c = _base()
    c.train.steps, c.train.batch_size, c.train.log_every_steps = 2, 16, 1
    c.train.eval_every_steps = c.train.checkpoint_every_steps = 2
    train.train_and_evaluate(c, str(tmp_path / 'src'))
    x, xt, what = identity.features(_config(source=str(tmp_path / 'src')))
    # Stage 2 of a width-0.25 CIFAR net is entered by stage 1's output: 4 channels, 8x8.
    assert x.shape == (64, 8, 8, 4) and xt.shape == (32, 8, 8, 4)
    assert 'step 2' in what and np.all(x >= 0)
    fresh, _, _ = identity.features(_config())
    assert not np.allclose(fresh, x)  # The trained weights, not an init.
    with pytest.raises(ValueError, match='identity.stage=4 is not a stage'):
        identity.features(_config(stage=4))


def test_run_experiment_writes_every_number_and_the_figure(tmp_path):
    out = identity.run_experiment(_config(), str(tmp_path))
    saved = json.loads((tmp_path / 'identity.json').read_text())
    assert (tmp_path / 'identity.png').stat().st_size > 0
    assert saved['finding'] == out['finding'] and saved['rule'] == identity.RULE
    assert len(saved['runs']) == 2 * 3 and saved['steps'] == [0, 2, 4]
    assert out['finding']['verdict'].endswith('provisional: one seed')
    assert len(saved['summary']) == 6 + 3  # And the plain stack's off-Dirac fractions.
    assert saved['summary']['plain x1 random off-Dirac'] == '{:.3f} -> {:.3f}'.format(
        *next(r for r in saved['runs'] if (r['stack'], r['target']) == ('plain', 'random'))[
            'off_dirac'
        ]
    )
    row = next(r for r in saved['runs'] if (r['stack'], r['target']) == ('plain', 'random'))
    assert saved['summary']['plain x1 random'] == f'{row["train"][-1]:.3g}'  # One lr, one seed.


def test_script_refuses_bad_settings_in_one_line(tmp_path):
    cmd = [sys.executable, 'scripts/identity.py', '--config', 'configs/identity.py',
           '--workdir', str(tmp_path), "--config.identity.stacks=('plain','resnet')"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1].startswith("error: identity.stacks=('plain', 'resnet')")
    )
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match='identity.batch=128 exceeds'):
        identity.validate_config(_config(batch=128))
