"""The question findings on synthetic evidence (hand-made metric rows and inspection numbers, no
training): each verdict a rule can give, from numbers made to give it."""

import pytest

from resjax import config_lib, study_config
from resjax.study import grid
from resjax.study.findings import question
from resjax.study.findings.base import Evidence
from resjax.study.numbers import RunData

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
