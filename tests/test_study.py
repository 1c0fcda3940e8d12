"""The plain-vs-residual study: grid expansion, bad input, and a tiny study end to end whose
report's numbers are checked against the runs' metrics.jsonl."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from resjax import config_lib, study

ROOT = os.path.join(os.path.dirname(__file__), '..')


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(
        'study_config', os.path.join(ROOT, 'configs', name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config():
    """Two small depths, plain and residual, BN, a few steps. To save compile time (the file's
    budget is ~60 s) ResNet-14 is left out, only the depth-8 nets carry the signal probes and
    are inspected, and only ResNet-8 the sharpness probe: every figure still has data."""
    c = config_lib.default_config()
    c.dataset.name = 'digits'
    c.dataset.augment = 'none'
    c.model.width = 0.25
    c.train.steps = 6
    c.train.batch_size = 16
    c.train.eval_batch_size = 120
    c.train.schedule = 'constant'
    c.train.lr = 0.05
    c.train.log_every_steps = 2
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 6
    c.probes.every_steps = 3
    c.probes.hessian_every_steps = 3
    c.probes.hessian_iters = 3
    c.probes.hessian_batch = 'fixed'
    c.study = study.default_study_config()
    c.study.depths = (8, 14)
    c.study.norms = ('batch',)
    c.study.exclude = ('depth=14 residual=true',)
    c.study.overrides = (
        'depth=14 residual=false -> train.lr=0.03',
        'depth=14 -> probes.every_steps=0 probes.hessian_every_steps=0',
        'residual=false -> probes.hessian_every_steps=0',
    )
    c.study.constructed = ('8->14',)  # plain-14 built from plain-8, probes off as plain-14's.
    s = c.study.inspect
    s.max_depth = 8
    s.examples, s.batch, s.lanczos_order, s.slq_draws, s.grid, s.chunk = 32, 32, 4, 1, 5, 25
    return c


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('study'))
    config = tiny_config()
    result = study.run_study(config, workdir)
    return config, workdir, result


def read_rows(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_digits_grid_order_names_and_overrides(tmp_path):
    config = load_config('study_digits.py')
    specs = study.expand_grid(config, str(tmp_path))
    assert [s.name for s in specs] == [
        'plain20_bn_s0', 'resnet20_bn_s0', 'plain56_bn_s0', 'resnet56_bn_s0',
        'plain20_nobn_s0', 'resnet20_nobn_s0', 'plain56_nobn_s0', 'resnet56_nobn_s0',
    ]  # fmt: skip
    for s in specs:
        assert s.config.model.depth == s.depth and s.config.model.norm == s.norm
        assert s.config.train.lr == (0.1 if s.norm == 'batch' else 0.02)
        assert s.config.probes.hessian_batch == 'fixed' and s.config.probes.every_steps > 0
        assert 'study' not in s.config
        assert s.workdir == os.path.join(str(tmp_path), 'runs', s.name)
    c10 = study.expand_grid(load_config('study_cifar10.py'), str(tmp_path))
    names = [s.name for s in c10]
    assert len(names) == 9 and 'resnet110_bn_s0' in names and 'plain110_bn_s0' not in names
    r110 = c10[names.index('resnet110_bn_s0')].config.train
    assert (r110.warmup, r110.warmup_steps) == ('constant', 400)


@pytest.mark.parametrize(
    'edit, message',
    [
        (lambda s: s.__setitem__('widths', (1,)), 'unknown study key'),
        (lambda s: s.inspect.__setitem__('gird', 3), 'unknown study.inspect key'),
        (lambda s: setattr(s, 'norms', ('layer',)), 'study.norms'),
        (lambda s: s.update(depths=(21,), constructed=()), 'run plain21_bn_s0'),
        (lambda s: setattr(s, 'constructed', ('14->8',)), 'study.constructed entry'),
        (lambda s: setattr(s, 'constructed', ('20->56',)), 'no plain-20 to start from'),
        (lambda s: setattr(s, 'overrides', ('norm=none -> train.lrr=1',)), 'unknown config key'),
        (lambda s: setattr(s, 'overrides', ('width=1 -> train.lr=1',)), 'selector term'),
        (lambda s: setattr(s, 'overrides', ('* -> train.lr=fast',)), 'not a float'),
        (lambda s: setattr(s.inspect, 'figures', ('contours',)), 'study.inspect.figures'),
        (lambda s: setattr(s, 'exclude', ('depth=8 kind=plain',)), 'study.exclude'),
        # An empty grid is refused like empty seeds (issue 19, case 8), not an empty report.
        (lambda s: setattr(s, 'exclude', ('*',)), r"study.exclude=\('\*',\) leaves no run"),
        (lambda s: setattr(s, 'seeds', ()), r'study.seeds=\(\) must be a non-empty'),
    ],
)
def test_bad_study_config_is_one_line_error(tmp_path, edit, message):
    config = tiny_config()
    edit(config.study)
    with pytest.raises(study.StudyError, match=message) as e:
        study.run_study(config, str(tmp_path))
    assert '\n' not in str(e.value)
    assert not os.listdir(tmp_path)  # Refused before anything was written.


def test_tiny_study_numbers_match_metrics(tiny):
    config, workdir, result = tiny
    with open(os.path.join(workdir, 'findings.json')) as f:
        saved = json.load(f)
    assert saved['missing'] == []
    names = ['plain8_bn_s0', 'resnet8_bn_s0', 'plain14_bn_s0', 'plain14from8_bn_s0']
    assert sorted(saved['runs']) == sorted(names)
    with open(os.path.join(workdir, 'runs', 'plain14from8_bn_s0', 'config.json')) as f:
        built = json.load(f)
    assert built['train']['init_from'] == os.path.join(workdir, 'runs', 'plain8_bn_s0')
    assert (built['model']['depth'], built['train']['lr']) == (14, 0.03)  # plain-14's recipe.
    with open(os.path.join(workdir, 'runs', 'plain14_bn_s0', 'config.json')) as f:
        assert json.load(f)['train']['lr'] == 0.03  # The override reached the run.
    for name in names:
        rows = read_rows(os.path.join(workdir, 'runs', name))
        got = saved['runs'][name]
        assert got['state'] == 'finished'
        train_acc = [r['train/accuracy'] for r in rows if 'train/accuracy' in r]
        eval_acc = [r['eval/accuracy'] for r in rows if 'eval/accuracy' in r]
        assert got['final_train_error'] == pytest.approx(1 - train_acc[-1], abs=1e-12)
        assert got['final_test_error'] == pytest.approx(1 - eval_acc[-1], abs=1e-12)
        if name.startswith('plain14'):
            assert got['init_grad_ratio'] is None and got['final_lambda_max'] is None
            continue
        init = next(r for r in rows if r['step'] == 0 and 'grad_norm/global' in r)
        convs = sorted(k for k in init if k.startswith('grad_norm/0'))
        assert got['init_grad_ratio'] == pytest.approx(init[convs[0]] / init[convs[-1]])
        lam = [r for r in rows if 'hessian/lambda_max' in r]
        if name == 'plain8_bn_s0':
            assert not lam and got['final_lambda_max'] is None
            continue
        assert got['final_lambda_max'] == pytest.approx(lam[-1]['hessian/lambda_max'])
        assert got['final_two_over_lr'] == pytest.approx(2 / 0.05)
    # The findings' text carries the same numbers as findings.json, formatted.
    with open(os.path.join(workdir, 'report.md')) as f:
        report = f.read()
    findings = {f['id']: f for f in saved['findings']}
    deg = findings['degradation_batch']
    p8, p14 = (saved['runs'][n]['final_train_error'] for n in ('plain8_bn_s0', 'plain14_bn_s0'))
    assert deg['numbers']['plain14_final_train_error'] == pytest.approx(p14)
    assert f'{100 * p14:.2f}% vs {100 * p8:.2f}%' in deg['text'] and deg['text'] in report
    assert deg['verdict'] == ('reproduced' if p14 - p8 > 0.005 else 'not reproduced')
    grads = findings['init_gradients_batch']
    ratio = saved['runs']['plain8_bn_s0']['init_grad_ratio']
    assert f'plain-8 {ratio:.3g}x' in grads['text'] and grads['text'] in report
    assert grads['verdict'] == ('exploding' if ratio > 1 else 'vanishing')
    lam = saved['runs']['resnet8_bn_s0']['final_lambda_max']
    assert f'ResNet-8 {lam:.3g} vs 2/lr 40 at step 3' in findings['sharpness']['text']
    for fid in ('spectrum', 'landscape', 'lesion'):
        assert findings[fid]['verdict'] != 'not available', findings[fid]['text']
    lesion = json.load(open(os.path.join(workdir, 'inspect', 'lesion', 'lesion.json')))
    assert set(lesion) == {'ResNet-8'}
    intact = lesion['ResNet-8']['test_error_intact']
    assert findings['lesion']['numbers']['ResNet-8']['intact'] == intact
    assert f'ResNet-8: intact {100 * intact:.2f}%' in findings['lesion']['text']
    # The question's answers: numbers read off the runs' last probe rows and final errors.
    last = lambda name: max(  # noqa: E731
        (r for r in read_rows(os.path.join(workdir, 'runs', name)) if 'cka/001_stage1_block1' in r),
        key=lambda r: r['step'],
    )
    median = lambda row, prefix: float(  # noqa: E731
        np.median([v for k, v in row.items() if k.startswith(prefix + '/')])
    )
    q = findings['question_residual']['numbers']
    assert q['resnet_branch_ratio_median'] == pytest.approx(
        median(last('resnet8_bn_s0'), 'branch_ratio')
    )
    assert q['plain_cka_median'] == pytest.approx(median(last('plain8_bn_s0'), 'cka'))
    q = findings['question_places']['numbers']
    assert q['plain_global'] == last('plain8_bn_s0')['init_distance/global'] > 0
    q = findings['question_solver']['numbers']
    assert q['source_final_train_error'] == saved['runs']['plain8_bn_s0']['final_train_error']
    assert q['built_final_train_error'] == saved['runs']['plain14from8_bn_s0']['final_train_error']
    assert q['random_init_final_train_error'] == p14
    for fid in ('question_gradients', 'question_residual', 'question_solver', 'question_places'):
        assert findings[fid]['verdict'] != 'not available', findings[fid]['text']
        assert findings[fid]['text'] in report
    assert '## What the question asks, and what the runs say' in report
    blocks = json.load(open(os.path.join(workdir, 'inspect', 'blocks', 'blocks.json')))
    assert set(blocks) == {'plain-8', 'ResNet-8'}
    assert np.allclose(np.diag(blocks['plain-8']['cka_matrix']), 1.0, atol=1e-5)
    spectrum = json.load(open(os.path.join(workdir, 'inspect', 'spectrum', 'spectrum.json')))
    assert findings['spectrum']['numbers']['plain-8']['ritz_max'] == spectrum['plain-8']['ritz_max']


def test_tiny_study_figures_are_real_images(tiny):
    _, workdir, result = tiny
    figures = result['figures']
    assert sorted(figures, key=int) == [str(n) for n in range(1, 13)]
    for number, fig in figures.items():
        image = matplotlib.image.imread(fig['path'])
        assert image.shape[:2] == (fig['height'], fig['width']), number
        assert image.shape[0] > 200 and image.shape[1] > 300
        gray = image[..., :3].mean(-1)
        assert gray.std() > 0.05 and (gray < 0.5).mean() > 0.002, f'figure {number} looks blank'
        assert os.path.exists(fig['path'][: -len('.png')] + '.json')
    with open(os.path.join(workdir, 'report.html')) as f:
        page = f.read()
    assert page.count('src="data:image/png;base64,') == 12
    assert 'src="figures/' not in page and 'Findings' in page


def test_rerun_skips_finished_runs_and_report_only_lists_missing(tiny, tmp_path):
    config, workdir, _ = tiny
    copy = str(tmp_path / 'study')
    shutil.copytree(workdir, copy)

    def must_not_train(config, workdir):
        raise AssertionError(f'trained {workdir} again')

    study.run_study(config, copy, trainer=must_not_train)
    shutil.rmtree(os.path.join(copy, 'runs', 'plain14_bn_s0'))
    rows = read_rows(os.path.join(copy, 'runs', 'resnet8_bn_s0'))
    with open(os.path.join(copy, 'runs', 'resnet8_bn_s0', 'metrics.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows if r['step'] <= 3)
    result = study.run_study(config, copy, report_only=True)
    assert result['missing'] == ['resnet8_bn_s0: partial (step 3 of 6)', 'plain14_bn_s0: missing']
    findings = {f['id']: f for f in result['findings']}
    assert findings['degradation_batch']['verdict'] == 'not available'
    assert 'plain14' in findings['degradation_batch']['text']
    with open(os.path.join(copy, 'report.md')) as f:
        report = f.read()
    assert '## Missing' in report and 'plain14_bn_s0: missing' in report
    assert math.isclose(result['runs']['plain8_bn_s0']['final_train_error'],
                        json.load(open(os.path.join(workdir, 'findings.json')))['runs'][
                            'plain8_bn_s0']['final_train_error'])  # fmt: skip


def test_script_bad_grid_key_exits_2_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'study.py'),
         '--config', os.path.join(ROOT, 'configs', 'study_digits.py'),
         '--workdir', str(tmp_path / 'w'), '--config.study.widths=1'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count('\n') == 0 and 'widths' in out.stderr
    assert not np.any([os.path.exists(tmp_path / 'w')])


def test_added_block_drift_reads_only_the_added_blocks():
    from resjax.study.numbers import RunData, added_block_drift

    def row(step, change, moved):
        r = {'step': step, 'grad_norm/global': 1.0, 'block_change/001_stage1_block1': 9.0}
        r['init_distance/001_stage1_block1/conv1'] = 9.0
        for b, (c, m) in enumerate(zip(change, moved), 2):  # blocks 2, 3: added to depth 8
            r[f'block_change/00{b}_stage1_block{b}'] = c
            r[f'init_distance/00{b}_stage1_block{b}/conv1'] = m
        return r

    run = RunData(None, 'finished', [row(0, (0.0, 0.0), (0.0, 0.0)), row(5, (0.1, 0.3), (1, 2))])
    drift = added_block_drift(run, source_depth=8)
    assert drift[0] == {'block_change_median': 0.0, 'init_distance_median': 0.0}
    assert drift[5] == {'block_change_median': pytest.approx(0.2), 'init_distance_median': 1.5}
