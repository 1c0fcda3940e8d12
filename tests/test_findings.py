"""The question's findings on synthetic evidence: hand-made metric rows and inspection results
(no training), one case per verdict each rule can give, so that no rule is one that cannot come
out against its claim."""

import pytest

from resjax import config_lib, study_config
from resjax.study import findings
from resjax.study.grid import RunSpec, run_name
from resjax.study.numbers import RunData

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
