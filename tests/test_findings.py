"""The question's findings on synthetic evidence: hand-made metric rows and inspection results
(no training), one case per verdict each rule can give, so that no rule is one that cannot come
out against its claim."""

import importlib.util
import json
import os

import pytest

from resjax import config_lib, study, study_config
from resjax.study import findings, grid
from resjax.study.findings import question
from resjax.study.findings.base import Evidence
from resjax.study.grid import RunSpec, run_name
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
    assert '(15.00% to 35.00% over 2 seeds)' in claim.text


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


BLOCKS = ('001_stage1_block1', '002_stage1_block2', '003_stage1_block3')


def _run(depth, residual, seed, rows, steps=10):
    """A finished run of the grid with these metrics rows."""
    c = config_lib.default_config()
    c.model.depth, c.model.residual, c.seed, c.train.steps = depth, residual, seed, steps
    name = run_name(depth, residual, 'batch', seed)
    spec = RunSpec(name, depth, residual, 'batch', seed, c, f'/nonexistent/{name}')
    return RunData(spec, 'finished', rows)


def _evidence(runs, inspection=None, **study):
    s = study_config.default_study_config()
    s.depths, s.norms, s.seeds = (20,), ('batch',), tuple(sorted({r.spec.seed for r in runs}))
    for k, v in study.items():
        s[k] = v
    return findings.Evidence(s, runs, inspection or {})


def _compute(fid, ev):
    spec = next(f for f in findings.FINDINGS if f.id == fid)
    return spec.compute(ev)


# ---------------------------------------------------------------------------------------------
# question_residual (a): lesions, descent cosines and branch ratios against their controls.


def _residual_row(step, branch=None, descent=0.0, cka=0.9):
    row = {'step': step, 'grad_norm/global': 1.0, 'grad_norm/000_stem/conv': 1.0}
    row['act_grad_norm/000_stem'] = 1.0
    for b in BLOCKS:
        row[f'grad_norm/{b}/conv1'] = row[f'act_grad_norm/{b}'] = 1.0
        row[f'descent_cos/{b}'] = descent
        row[f'cka/{b}'] = cka
        if branch is not None:
            row[f'branch_ratio/{b}'] = branch
    return row


def _residual_runs(seed, plain_descent, res_descent, res_descent0, branch, branch0):
    train = {'step': 10, 'train/accuracy': 0.9, 'eval/accuracy': 0.8}
    plain = [_residual_row(0), _residual_row(10, descent=plain_descent), train]
    res = [
        _residual_row(0, branch=branch0, descent=res_descent0),
        _residual_row(10, branch=branch, descent=res_descent),
        train,
    ]
    return [_run(20, False, seed, plain), _run(20, True, seed, res)]


def _lesions(plain_up, res_up):
    def result(up, shortcut, kind):
        blocks = [{'block': b, 'shortcut': shortcut, 'lesion': kind, 'test_error': 0.1 + up}
                  for b in BLOCKS]  # fmt: skip
        return {'test_error_intact': 0.1, 'blocks': blocks, 'step': 10}

    return {'lesion': {'plain-20': result(plain_up, None, 'identity'),
                       'ResNet-20': result(res_up, 'identity', 'branch removed')}}  # fmt: skip


@pytest.mark.parametrize(
    'case,want,tests',
    [
        # Lesions cost the plain net more, ResNet blocks refine, branches small and not grown.
        ((0.0, 0.05, 0.4, 0.0, 0.2, 0.3), 'supports (a)', {1}),
        # Every prediction fails: plain blocks refine more, ResNet lesions cost more, branches
        # large and grown since step 0.
        ((0.2, 0.6, 0.1, 0.0, 0.8, 0.3), 'contradicts (a)', {-1}),
        # Lesions and branches as (a) says, but the plain net refines more.
        ((0.0, 0.6, 0.1, 0.0, 0.2, 0.3), 'undecided', {1, -1}),
    ],
)
def test_question_residual_gives_each_verdict(case, want, tests):
    plain_up, plain_descent, res_descent, res_descent0, branch, branch0 = case
    runs = _residual_runs(0, plain_descent, res_descent, res_descent0, branch, branch0)
    res_up = 0.3 if want == 'contradicts (a)' else 0.01
    claim = _compute('question_residual', _evidence(runs, _lesions(0.3 - plain_up, res_up)))
    assert claim.verdict == f'{want}; provisional: one seed'
    assert set(claim.numbers['tests'].values()) == tests
    assert 'step 0' in claim.rule and '0.5' in claim.rule  # Fixed before any number.


def test_question_residual_counts_no_difference_within_the_seed_spread():
    # Seed 0 refines strongly, seed 1 not at all: the mean difference (0.2) is below the range.
    runs = _residual_runs(0, 0.05, 0.45, 0.0, 0.2, 0.3) + _residual_runs(
        1, 0.05, 0.05, 0.0, 0.2, 0.3
    )
    claim = _compute('question_residual', _evidence(runs, _lesions(0.3, 0.01)))
    assert claim.numbers['tests'] == {'lesion': 1, 'refinement': 0, 'small_branches': 1}
    assert claim.verdict == 'undecided'  # Two seeds: not provisional.
    assert claim.numbers['descent_cos_resnet_end']['values'] == [0.45, 0.05]


# ---------------------------------------------------------------------------------------------
# question_gradients: vanishing iff the first/last conv gradient ratio falls below 0.1.


def _gradient_runs(seed, plain_ratio, res_ratio):
    def rows(ratio):
        probe = lambda step, r: {  # noqa: E731
            'step': step, 'grad_norm/global': 1.0, 'grad_norm/000_stem/conv': r,
            'grad_norm/009_stage3_block3/conv2': 1.0, 'act_grad_norm/000_stem': 1.0,
            'act_grad_norm/009_stage3_block3': 1.0,
        }  # fmt: skip
        return [probe(0, 1.0), probe(10, ratio), {'step': 10, 'train/accuracy': 0.9}]

    return [_run(20, False, seed, rows(plain_ratio)), _run(20, True, seed, rows(res_ratio))]


@pytest.mark.parametrize(
    'ratios,want',
    [
        ([(3.0, 1.0)], 'contradicts the folklore; provisional: one seed'),  # Plain: no vanishing.
        ([(0.01, 1.0), (0.02, 1.0)], 'supports the folklore'),
        ([(0.01, 0.01), (0.02, 0.05)], 'contradicts the folklore'),  # The ResNet's vanish too.
        ([(0.01, 1.0), (0.5, 1.0)], 'undecided'),  # The seeds disagree.
    ],
)
def test_question_gradients_gives_each_verdict(ratios, want):
    runs = [r for seed, (p, q) in enumerate(ratios) for r in _gradient_runs(seed, p, q)]
    claim = _compute('question_gradients', _evidence(runs))
    assert claim.verdict == want


# ---------------------------------------------------------------------------------------------
# question_places (c): loss barriers.

M = question.BARRIER_MARGIN


def _places_evidence(init: dict, lmc: dict | None = None, seeds=(0,), drawn=True):
    """Evidence of one depth-8 BN grid, plain and residual, `seeds`: `init[(residual, seed)]`
    is that run's init -> final loss barrier (nats), `lmc[...]` its barrier to its partner."""
    c = config_lib.default_config()
    c.dataset.name = 'digits'
    c.study = study_config.default_study_config()
    c.study.depths, c.study.norms, c.study.seeds = (8,), ('batch',), tuple(seeds)
    c.study.lmc = lmc is not None
    specs = grid.expand_grid(c, '/nonexistent')
    runs, drawn_runs = [], {}
    for spec in specs:
        row = {'step': 10, 'grad_norm/global': 1.0, 'init_distance/global': 0.5}
        row['init_angle/global'] = 30.0 + spec.residual
        runs.append(RunData(spec, 'finished', [row]))
        if spec.data_seed is not None:
            continue
        key = (spec.residual, spec.seed)

        def line(barrier):
            return {'max_bump_over_chord': barrier, 'error_barrier': barrier / 10}

        drawn_runs[spec.name] = {
            'init': line(init[key]),
            'lmc': line(lmc[key]) if lmc else None,
        }
    document = {'settings': {'examples': 256, 'bn_examples': 256}, 'runs': drawn_runs}
    return Evidence(c.study, runs, {'barriers': document if drawn else None})


def _places(init, lmc=None, seeds=(0,), drawn=True):
    return question.question_places(_places_evidence(init, lmc, seeds, drawn))


def test_places_supports_c_when_the_plain_barrier_is_the_larger():
    claim = _places({(False, 0): 3 * M, (True, 0): 0.0})
    assert claim.verdict == 'supports (c); provisional: one seed'
    assert 'the ResNet of the same depth' in claim.text and 'nats' in claim.rule
    assert 'not identifiable' in claim.text  # the distance from init, descriptive
    assert claim.numbers['plain_init_angle']['mean'] == 30.0


def test_places_contradicts_c_when_the_resnet_barrier_is_the_larger_or_none_has_one():
    assert _places({(False, 0): 0.0, (True, 0): 3 * M}).verdict.startswith('contradicts (c)')
    claim = _places({(False, 0): M / 2, (True, 0): M / 4})
    assert claim.verdict == 'contradicts (c); provisional: one seed'
    assert 'both nets end' in claim.text


def test_places_is_undecided_within_the_seed_spread_and_not_available_without_figure_14():
    # The plain barrier is larger by 2 margins on average, but the seeds spread by more.
    init = {(False, 0): 2 * M, (False, 1): 8 * M, (True, 0): 2 * M, (True, 1): 4 * M}
    claim = _places(init, seeds=(0, 1))
    assert claim.verdict == 'undecided'  # two seeds: not provisional
    assert claim.numbers['plain_init_loss_barrier']['range'] == pytest.approx(6 * M)
    assert isinstance(_places({(False, 0): 1.0, (True, 0): 0.0}, drawn=False), str)


def test_places_reports_linear_mode_connectivity_beside_the_verdict():
    init = {(False, 0): 3 * M, (True, 0): 0.0}
    claim = _places(init, lmc={(False, 0): 2 * M, (True, 0): M / 2})
    assert claim.verdict.startswith('supports (c)')  # LMC does not decide
    assert claim.numbers['lmc_connected'] == ['ResNet-8']
    assert 'one linearly connected basin' in claim.text
    assert 'not measured' in _places(init).text


# ---------------------------------------------------------------------------------------------
# question_shortcut: the Dirac-parametrised and Dirac-initialised plain nets against the
# midpoint of the plain/ResNet pair, and the scaled shortcut against the ResNet.

SHORTCUT_VARIANTS = (
    'diracparam: residual=false -> model.dirac=param',
    'diracinit: residual=false -> model.dirac=init',
    'shortcut0.5: residual=true -> model.shortcut_scale=0.5',
)


def _shortcut_evidence(errors, seeds=(0,), variants=SHORTCUT_VARIANTS):
    """Evidence of the tiny study at depth 8 with `variants`: every run finished, with a
    probe row at step 0 and a final test error of `errors[kind]` (a number, or one per seed),
    kind 'plain', 'resnet', or a variant's tag."""
    spec = importlib.util.spec_from_file_location('tiny_config', TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    s = config.study
    s.depths, s.seeds, s.exclude, s.constructed, s.overrides = (8,), seeds, (), (), ()
    s.variants = variants
    runs = []
    for run in study.expand_grid(config, '/nonexistent'):
        kind = run.variant or ('resnet' if run.residual else 'plain')
        e = errors[kind]
        e = e[seeds.index(run.seed)] if isinstance(e, tuple) else e
        steps = run.config.train.steps
        probe = {'step': 0, 'grad_norm/global': 1.0, 'grad_norm/000_stem/conv': 1.0,
                 'act_grad_norm/000_stem/conv': 1.0, 'act_std/000_stem/conv': 1.0}  # fmt: skip
        rows = [probe, {'step': steps, 'train/accuracy': 1 - e},
                {'step': steps, 'eval/accuracy': 1 - e}]  # fmt: skip
        runs.append(RunData(run, 'finished', rows))
    return Evidence(config.study, runs, {})


def _shortcut(errors, **kw):
    claim = _compute('question_shortcut', _shortcut_evidence(errors, **kw))
    assert not isinstance(claim, str), claim
    return claim


# Plain 40%, ResNet 20%: the midpoint is 30%; a variant at 22% closes most of the gap.
SHORTCUT_PAIR = {'plain': 0.4, 'resnet': 0.2, 'shortcut0.5': 0.25}


@pytest.mark.parametrize(
    'param, init, want',
    [
        (0.22, 0.38, 'the zero of the parametrisation matters'),
        (0.38, 0.22, 'the starting point matters'),
        (0.22, 0.22, 'the starting point matters'),
        (0.38, 0.38, 'the explicit paths matter'),
        (0.30, 0.38, 'undecided'),  # Dirac-param at the midpoint
    ],
)
def test_shortcut_gives_each_verdict(param, init, want):
    claim = _shortcut({**SHORTCUT_PAIR, 'diracparam': param, 'diracinit': init})
    assert claim.verdict == want + '; provisional: one seed'
    assert claim.rule == findings.shortcut.SHORTCUT_RULE  # fixed before the numbers
    assert 'plain-8 40.00%, ResNet-8 20.00%' in claim.text  # the controls
    assert claim.numbers['dirac_param']['closure'] == [pytest.approx((0.4 - param) / 0.2)]
    assert 'plain-8 (Dirac param): ' in claim.text
    assert ('closes it too' in claim.text) == (param == init == 0.22)
    if want == 'undecided':
        assert 'Dirac-parametrised net is within the margin or spread' in claim.text
    # He et al. 2016's scaled shortcut: 25% against 20%, worse.
    assert claim.numbers['shortcut_x0.5']['worse'] == 1
    assert 'the runs agree with He et al. 2016' in claim.text


def test_shortcut_no_gap_to_explain_and_two_seeds():
    claim = _shortcut({**SHORTCUT_PAIR, 'plain': 0.2, 'diracparam': 0.2, 'diracinit': 0.3})
    assert claim.verdict == 'undecided: no gap to explain; provisional: one seed'
    assert 'of the gap' not in claim.text  # no closure of a gap that is not there
    # Two seeds: the Dirac-param net is below the midpoint by more than its spread.
    errors = {'plain': (0.40, 0.42), 'resnet': (0.20, 0.22), 'shortcut0.5': (0.21, 0.20),
              'diracparam': (0.22, 0.25), 'diracinit': (0.38, 0.41)}  # fmt: skip
    claim = _shortcut(errors, seeds=(0, 1))
    assert claim.verdict == 'the zero of the parametrisation matters'  # not provisional
    assert claim.numbers['dirac_param']['midpoint']['values'] == [0.3, pytest.approx(0.32)]
    assert '(85% to 90% over 2 seeds) of the gap' in claim.text
    assert claim.numbers['shortcut_x0.5']['worse'] == 0
    assert 'cannot confirm He et al. 2016' in claim.text
    # The seeds of the Dirac-init net straddle the midpoint's by more than the margin: undecided.
    claim = _shortcut({**errors, 'diracinit': (0.25, 0.40)}, seeds=(0, 1))
    assert claim.verdict == 'undecided'


def test_shortcut_says_what_is_missing():
    claim = _shortcut({**SHORTCUT_PAIR, 'diracparam': 0.22}, variants=SHORTCUT_VARIANTS[:1])
    assert claim.verdict == 'undecided; provisional: one seed'
    assert 'Dirac-initialised net is missing' in claim.text
    assert 'No finished Dirac-initialised plain-8 (model.dirac=init) variant' in claim.text
    # Picked by the model config, not the tag: a Dirac-init run tagged otherwise counts.
    other = ('start: residual=false -> model.dirac=init', *SHORTCUT_VARIANTS[:1])
    claim = _shortcut({**SHORTCUT_PAIR, 'start': 0.22, 'diracparam': 0.38}, variants=other)
    assert claim.verdict.startswith('the starting point matters')
    ev = _shortcut_evidence({**SHORTCUT_PAIR, 'diracparam': 0.2, 'diracinit': 0.2})
    ev.runs = [r for r in ev.runs if r.spec.residual is False]  # no ResNet: not available
    assert isinstance(_compute('question_shortcut', ev), str)
    ev.study.variants = ()  # a study without variants cannot pose the question
    assert _compute('question_shortcut', ev) is None


def test_shortcut_figure_15_has_a_panel_per_seed(tmp_path):
    from resjax.study import figures

    errors = {**SHORTCUT_PAIR, 'diracparam': 0.22, 'diracinit': 0.38}
    ev = _shortcut_evidence(errors, seeds=(0, 1))
    fig = figures.figure_variants(ev.runs, str(tmp_path))
    assert fig['width'] > 1.8 * fig['height']  # two panels side by side
    numbers = json.load(open(fig['path'][: -len('.png')] + '.json'))
    assert len(numbers) == 10  # plain, ResNet and three variants, each seed
    assert numbers['plain8_bn_diracinit_s1']['test_error'] == [pytest.approx(0.38)]
    assert figures.figure_variants([r for r in ev.runs if r.spec.group], str(tmp_path)) is None
