"""The question findings on synthetic evidence: hand-made metric rows (no training), one test
per verdict each finding can give."""

import importlib.util
import json
import os

import pytest

from resjax import study
from resjax.study.findings import question
from resjax.study.findings.base import Evidence
from resjax.study.numbers import RunData

TINY = os.path.join(os.path.dirname(__file__), 'study_tiny_config.py')


def _solver_config(seeds=(0,), lrs=(0.01, 0.1)):
    """The tiny study (8->14) with the constructed-solution sweep at `lrs`."""
    spec = importlib.util.spec_from_file_location('tiny_config', TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.study.seeds = seeds
    config.study.constructed_lrs = lrs
    # Rows of 10^5 examples: their sampling noise (< 0.4%) stays below the 0.5% margin.
    config.train.log_every_steps, config.train.batch_size = 100, 1000
    return config


def _solver_rows(steps, train_error, test_error, worst=None, lam0=None, lr=None):
    """A finished run's rows: training rows ending at `train_error` (one at `worst` before it,
    if given), a last eval row at `test_error`, the sharpness probe at step 0 if `lam0`."""
    rows = []
    if lam0 is not None:
        rows.append({'step': 0, 'hessian/lambda_max': lam0, 'hessian/two_over_lr': 2 / lr})
    if worst is not None:
        rows.append({'step': steps // 2, 'train/accuracy': 1 - worst})
    rows.append({'step': steps, 'train/accuracy': 1 - train_error})
    rows.append({'step': steps, 'eval/accuracy': 1 - test_error})
    return rows


def _solver_evidence(config, finals, source_errors=None, diverged=()):
    """Evidence of the grid and sweep runs: grid runs end at `source_errors[name]` (train,
    test; default 0.2, 0.2), sweep run `<role>@<lr>` at `finals(role, lr, seed)` (train, test);
    runs named in `diverged` diverged."""
    runs = []
    for spec in study.expand_grid(config, '/nonexistent'):
        steps = spec.config.train.steps
        if spec.lr is None:
            train, test = (source_errors or {}).get(spec.name, (0.2, 0.2))
            runs.append(RunData(spec, 'finished', _solver_rows(steps, train, test)))
            continue
        if spec.name in diverged:
            runs.append(RunData(spec, 'diverged', [{'step': 1, 'train/accuracy': 0.1}]))
            continue
        role = _solver_role(spec)
        train, test = finals(role, spec.lr, spec.seed)
        rows = _solver_rows(steps, train, test, worst=max(train, 0.5), lam0=3.0, lr=spec.lr)
        runs.append(RunData(spec, 'finished', rows))
    return Evidence(config.study, runs, {})


def _solver_role(spec):
    deep = spec.depth == 14
    if spec.source_depth == spec.depth:
        return (
            'restart_random' if deep else ('restart_resnet' if spec.residual else 'restart_plain')
        )
    return 'built_resnet' if spec.residual else 'built_plain'


def _solver_claim(ev):
    claim = question.question_solver(ev)
    assert not isinstance(claim, str), claim
    return claim


def _solver_lr(claim, lr):
    return next(x['verdict'] for x in claim.numbers['lrs'] if x['lr'] == lr)


def test_solver_sweep_unstable_because_of_depth_and_supports_b():
    # lr 0.1: only the built plain net leaves (training error 0.2 -> 0.3); lr 0.01: all keep.
    # Random-init plain-14 ends at 0.6 at either lr, the built one at 0.2: supports (b).
    def finals(role, lr, seed):
        if role == 'restart_random':
            return 0.6, 0.6
        return (0.3, 0.2) if (role, lr) == ('built_plain', 0.1) else (0.2, 0.2)

    claim = _solver_claim(_solver_evidence(_solver_config(), finals))
    assert _solver_lr(claim, 0.1) == 'unstable because of depth'
    assert _solver_lr(claim, 0.01) == 'kept'
    assert claim.verdict == 'supports (b); provisional: one seed'
    assert 'the built plain-14 keeps its start at lr 0.01.' in claim.text
    nets = claim.numbers['lrs'][1]['nets']
    assert nets['built_plain']['state'] == 'leaves' and nets['built_resnet']['state'] == 'keeps'
    assert nets['built_plain']['worst_train']['mean'] == 0.5
    assert nets['built_plain']['sharpness_ratio']['mean'] == pytest.approx(3.0 / 20)
    assert claim.numbers['total_steps'] == {'built': 6 + 200, 'random_init': 6 + 200}
    assert '0.01' not in claim.rule and 'plain-14' not in claim.rule  # Fixed before the runs.


def test_solver_sweep_high_lr_artefact_and_contradicts_b():
    # lr 0.1: every net leaves (test error up); random init ends as low as the built net.
    def finals(role, lr, seed):
        return (0.2, 0.4) if lr == 0.1 else (0.2, 0.2)

    claim = _solver_claim(_solver_evidence(_solver_config(), finals))
    assert _solver_lr(claim, 0.1) == 'a high-lr artefact'
    assert claim.verdict == 'contradicts (b); provisional: one seed'


def test_solver_sweep_mixed_and_diverged_runs_leave():
    # lr 0.1: the built plain net diverges and so does its restarted source; the built ResNet
    # keeps: neither depth nor lr alone. The built net at lr 0.01 still beats random init.
    def finals(role, lr, seed):
        return (0.6, 0.6) if role == 'restart_random' else (0.2, 0.2)

    diverged = ('plain14from8_lr0.1_bn_s0', 'plain8from8_lr0.1_bn_s0')
    claim = _solver_claim(_solver_evidence(_solver_config(), finals, diverged=diverged))
    assert _solver_lr(claim, 0.1) == 'mixed/undecided'
    assert claim.numbers['lrs'][1]['nets']['built_plain']['diverged']
    assert claim.numbers['claim_b']['built_best_lr'] == 0.01
    assert claim.verdict.startswith('supports (b)')


def test_solver_sweep_undecided_within_the_seed_spread():
    # Two seeds: random init ends 0.05 above the built net on average, but its seeds span 0.2.
    def finals(role, lr, seed):
        if role == 'restart_random':
            return (0.15, 0.2) if seed == 0 else (0.35, 0.2)
        return 0.2, 0.2

    claim = _solver_claim(_solver_evidence(_solver_config(seeds=(0, 1)), finals))
    assert claim.verdict == 'undecided'  # Two seeds: not provisional.
    assert claim.numbers['claim_b']['spread'] == pytest.approx(0.2)
    assert '(15.00%-35.00% over 2 seeds)' in claim.text


def test_solver_sweep_rises_within_the_rows_sampling_noise_are_unclear():
    # Rows of 2 steps x 16 examples: a rise from 20% to 30% is within 2 standard errors (21%).
    config = _solver_config()
    config.train.log_every_steps, config.train.batch_size = 2, 16

    def finals(role, lr, seed):
        return (0.6, 0.6) if role == 'restart_random' else (0.3, 0.2)

    claim = _solver_claim(_solver_evidence(config, finals))
    lr = claim.numbers['lrs'][0]
    assert lr['nets']['built_plain']['state'] == 'unclear' and lr['verdict'] == 'mixed/undecided'
    noise = 2 * (0.2 * 0.8 / 32 + 0.3 * 0.7 / 32) ** 0.5
    assert lr['nets']['built_plain']['train_noise'] == pytest.approx(noise)
    assert 'differ by up to' in claim.text
    # 60% against 30%: the difference exceeds 2 standard errors of those rows (24%).
    assert claim.verdict.startswith('supports (b)')

    # 35% against 30%: within the noise, and not shown equal either.
    def close(role, lr, seed):
        return (0.35, 0.35) if role == 'restart_random' else (0.3, 0.2)

    claim = _solver_claim(_solver_evidence(config, close))
    assert claim.verdict == 'undecided; provisional: one seed'


def test_solver_sweep_not_available_until_its_runs_finish():
    ev = _solver_evidence(_solver_config(), lambda role, lr, seed: (0.2, 0.2))
    ev.runs = [RunData(r.spec, 'missing', []) if r.spec.lr == 0.1 else r for r in ev.runs]
    assert 'not finished' in question.question_solver(ev)


def test_solver_single_run_is_undecided():
    # Without the sweep, the one constructed run has no control: undecided whatever it does.
    config = _solver_config(lrs=())
    runs = []
    for spec in study.expand_grid(config, '/nonexistent'):
        error = 0.1 if spec.source else 0.6 if spec.depth == 14 else 0.2
        runs.append(RunData(spec, 'finished', _solver_rows(spec.config.train.steps, error, error)))
    claim = _solver_claim(Evidence(config.study, runs, {}))
    assert claim.verdict == 'undecided' and 'uncontrolled' in claim.text
    assert claim.numbers['beats_random'] and claim.numbers['total'] == 12


def test_solver_sweep_figure_13_has_a_panel_per_lr(tmp_path):
    import matplotlib.image

    from resjax.study import figures
    from resjax.study.findings.sweep import sweep_runs

    ev = _solver_evidence(_solver_config(), lambda role, lr, seed: (0.3, 0.3))
    fig = figures.figure_sweep(sweep_runs(ev.study, ev.runs), str(tmp_path))
    image = matplotlib.image.imread(fig['path'])
    assert image.shape[:2] == (fig['height'], fig['width']) and fig['width'] > 2 * fig['height']
    numbers = json.load(open(fig['path'][: -len('.png')] + '.json'))
    assert len(numbers) == 10  # Five nets at each of two lrs.
    built = numbers['plain14from8_lr0.1_bn_s0']
    assert (built['lambda_max_step0'], built['two_over_lr']) == (3.0, 20.0)
    assert built['start_train_error'] == pytest.approx(0.2)  # Its source's final one.
