"""The plain-vs-residual study: grid expansion, bad input, and a tiny study end to end whose
report's numbers are checked against the runs' metrics.jsonl."""

import glob
import importlib.util
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from conftest import persistent_compilation_cache

from resjax import study

ROOT = os.path.join(os.path.dirname(__file__), '..')
TINY = os.path.join(os.path.dirname(__file__), 'study_tiny_config.py')


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(
        'study_config', os.path.join(ROOT, 'configs', name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config(arg=None):
    """The tiny study of tests/study_tiny_config.py (its docstring says what it trains)."""
    spec = importlib.util.spec_from_file_location('tiny_config', TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope='module')
def xla_cache(tmp_path_factory):
    """The executables the `tiny` study compiled: the study subprocesses of later tests load
    them instead of compiling the same steps again."""
    return str(tmp_path_factory.mktemp('xla'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, xla_cache):
    workdir = str(tmp_path_factory.mktemp('study'))
    config = tiny_config()
    with persistent_compilation_cache(xla_cache):
        result = study.run_study(config, workdir)
    return config, workdir, result


def must_not_train(config, workdir):
    raise AssertionError(f'trained {workdir} again')


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
        assert s.variant is None and s.group == (s.depth, s.residual, s.norm)
    c10 = study.expand_grid(load_config('study_cifar10.py'), str(tmp_path))
    names = [s.name for s in c10]
    assert len(names) == 9 and 'resnet110_bn_s0' in names and 'plain110_bn_s0' not in names
    r110 = c10[names.index('resnet110_bn_s0')].config.train
    assert (r110.warmup, r110.warmup_steps) == ('constant', 400)


@pytest.mark.parametrize(
    'name',
    ['study_digits.py', 'study_cifar10.py', 'study_cifar10_folder.py', 'study_shortcut_folder.py'],
)
def test_every_study_config_and_its_smoke_expand_to_a_grid(name, tmp_path):
    for arg in (None, 'smoke'):
        specs = study.expand_grid(load_config(name, arg), str(tmp_path))
        assert specs and all(s.config.train.steps > 0 for s in specs)
    assert {s.depth for s in specs} == {8, 14}  # The smoke grid, constructed runs included.


def test_variants_are_runs_after_the_grid_and_no_grid_points(tmp_path):
    specs = study.expand_grid(load_config('study_shortcut_folder.py'), str(tmp_path))
    assert [s.name for s in specs] == [
        'plain56_bn_s0', 'plain56_bn_s1', 'resnet56_bn_s0', 'resnet56_bn_s1',
        'plain56_bn_diracparam_s0', 'plain56_bn_diracparam_s1',
        'plain56_bn_diracinit_s0', 'plain56_bn_diracinit_s1',
        'resnet56_bn_shortcut0.5_s0', 'resnet56_bn_shortcut0.5_s1',
    ]  # fmt: skip
    by_name = {s.name: s for s in specs}
    want = {'diracparam': ('model.dirac', 'param', 'plain-56 (Dirac param)'),
            'diracinit': ('model.dirac', 'init', 'plain-56 (Dirac init)'),
            'shortcut0.5': ('model.shortcut_scale', 0.5, 'ResNet-56 (shortcut x0.5)')}  # fmt: skip
    for v in specs[4:]:
        key, value, label = want[v.variant]
        run = by_name[v.name.replace(f'_{v.variant}', '')]
        a, b = (study.grid._leaves(s.config.to_dict()) for s in (v, run))
        assert {k for k in a if a[k] != b[k]} == {key} and a[key] == value
        assert v.group is None and v.label == label and v.seed == run.seed
    # No inspection figure takes a variant; findings' grid points do not hold one.
    targets = study.grid.inspection_targets(specs)
    assert not any(s.variant for t in targets.values() for s in t)
    # At the smoke depths the selector's depth=56 is the deepest, 14.
    smoke = study.expand_grid(load_config('study_shortcut_folder.py', 'smoke'), str(tmp_path))
    assert [s.name for s in smoke if s.variant] == [
        'plain14_bn_diracparam_s0', 'plain14_bn_diracinit_s0', 'resnet14_bn_shortcut0.5_s0'
    ]  # fmt: skip


def test_figure_4_is_awaited_only_when_a_grid_run_probes_sharpness(tmp_path):
    # Nothing trained: every figure is missing, and figure 4 only where it will ever be drawn.
    for name, awaited in (('study_cifar10_folder.py', True), ('study_shortcut_folder.py', False)):
        config = load_config(name)
        workdir = str(tmp_path / name)
        result = study.report.write_report(config, study.expand_grid(config, workdir), workdir)
        lines = [x for x in result['missing'] if x.startswith('figure ')]
        assert any(x.startswith('figure 1 ') for x in lines)
        assert any(x.startswith('figure 4 ') for x in lines) == awaited, name


def test_lmc_partners_share_the_init_and_stay_out_of_the_grid(tmp_path):
    config = load_config('study_digits.py')
    config.study.seeds, config.study.lmc = (0, 1), True
    specs = study.expand_grid(config, str(tmp_path))
    partners = [s for s in specs if s.data_seed is not None]
    # The first seed's: a partner costs a full run (every seed has its init -> final barrier).
    assert [s.name for s in partners] == ['plain56_bn_s0_d1000', 'resnet56_bn_s0_d1000']
    assert specs[-2:] == partners  # trained after the grid
    by_name = {s.name: s for s in specs}
    for p in partners:
        run = by_name[p.name.rsplit('_d', 1)[0]]
        assert p.group is None and p.seed == run.seed and p.data_seed == run.seed + 1000
        # The same config (hence the same init: it reads `seed`) but the data seed and probes.
        a, b = (study.grid._leaves(s.config.to_dict()) for s in (p, run))
        assert {k for k in a if a[k] != b[k]} == {
            'data_seed', 'probes.every_steps', 'probes.hessian_every_steps'
        }  # fmt: skip
    targets = study.grid.inspection_targets(specs)
    assert [s.name for s in targets['barriers']] == [
        'plain56_bn_s0', 'plain56_bn_s1', 'resnet56_bn_s0', 'resnet56_bn_s1',
        *[p.name for p in partners],
    ]  # fmt: skip
    assert not any(s.data_seed is not None for s in targets['spectrum'] + targets['lesion'])
    config.study.lmc = False
    assert not any(s.data_seed is not None for s in study.expand_grid(config, str(tmp_path)))


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
        # A constructed entry whose source is excluded is refused, not dropped silently.
        (
            lambda s: setattr(s, 'exclude', ('depth=8 residual=false',)),
            r"'8->14' starts from plain8_bn_s0, which study.exclude leaves out",
        ),
        # An empty grid is refused like empty seeds, not an empty report.
        (lambda s: setattr(s, 'exclude', ('*',)), r"study.exclude=\('\*',\) leaves no run"),
        (lambda s: setattr(s, 'seeds', ()), r'study.seeds=\(\) must be a non-empty'),
        (lambda s: setattr(s, 'variants', ('Dirac: * -> model.dirac=init',)), 'a tag of'),
        (lambda s: setattr(s, 'variants', ('a: * -> seed=3',)), "sets \\['seed'\\]"),
        (
            lambda s: setattr(s, 'variants', ('a: * -> train.lr=1', 'a: * -> train.lr=2')),
            r"repeats the tag\(s\) \['a'\]",
        ),
        (
            lambda s: setattr(s, 'variants', ('a: depth=14 residual=true -> train.lr=1',)),
            'matches no grid run',
        ),
        (
            lambda s: setattr(s, 'variants', ('dp: residual=true -> model.dirac=param',)),
            'run resnet8_bn_dp_s0: ',
        ),
        (lambda s: setattr(s, 'variants', ('a: * -> model.dirc=init',)), "entry 'a': study"),
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
    assert set(lesion) == {'ResNet-8', 'plain-8'}  # The plain net's lesions: (a)'s control.
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
    assert q['resnet_branch_ratio_end']['values'] == [
        pytest.approx(median(last('resnet8_bn_s0'), 'branch_ratio'))
    ]
    assert q['cka_plain_end']['mean'] == pytest.approx(median(last('plain8_bn_s0'), 'cka'))
    assert q['descent_cos_resnet_end']['mean'] == pytest.approx(
        median(last('resnet8_bn_s0'), 'descent_cos')
    )
    plain_lesions = lesion['plain-8']
    assert [b['lesion'] for b in plain_lesions['blocks']] == ['identity']
    assert q['lesion_increase_plain'] == pytest.approx(
        plain_lesions['blocks'][0]['test_error'] - plain_lesions['test_error_intact']
    )
    assert findings['question_residual']['verdict'].endswith('provisional: one seed')
    q = findings['question_places']['numbers']
    distance = last('plain8_bn_s0')['init_distance/global']
    assert q['plain_init_distance']['values'] == [pytest.approx(distance)] and distance > 0
    drawn = json.load(open(os.path.join(workdir, 'inspect', 'barriers', 'barriers.json')))
    assert set(drawn['runs']) == {'plain8_bn_s0', 'resnet8_bn_s0'}
    barrier = drawn['runs']['plain8_bn_s0']['init']['max_bump_over_chord']
    assert q['plain_init_loss_barrier']['values'] == [barrier] and barrier >= 0
    assert drawn['settings']['bn_stats'] == 'recompute'
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
    assert sorted(figures, key=int) == [*(str(n) for n in range(1, 13)), '14']
    for number, fig in figures.items():
        image = matplotlib.image.imread(fig['path'])
        assert image.shape[:2] == (fig['height'], fig['width']), number
        assert image.shape[0] > 200 and image.shape[1] > 300
        gray = image[..., :3].mean(-1)
        assert gray.std() > 0.05 and (gray < 0.5).mean() > 0.002, f'figure {number} looks blank'
        assert os.path.exists(fig['path'][: -len('.png')] + '.json')
    with open(os.path.join(workdir, 'report.html')) as f:
        page = f.read()
    assert page.count('src="data:image/png;base64,') == 13
    assert 'src="figures/' not in page and 'Findings' in page


def test_rerun_skips_finished_runs_and_report_only_lists_missing(tiny, tmp_path):
    config, workdir, _ = tiny
    copy = str(tmp_path / 'study')
    shutil.copytree(workdir, copy)

    # A kill during a write tears the last line of a finished run's metrics: training skips
    # such a line, and the study reads rows as training does.
    with open(os.path.join(copy, 'runs', 'plain8_bn_s0', 'metrics.jsonl'), 'a') as f:
        f.write('{"step": 6, "train/lo')
    result = study.run_study(config, copy, trainer=must_not_train)
    assert (result['status'], result['missing']) == ('complete', [])
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


def _script(*args, cache=''):
    """`scripts/study.py` with `args`, as a command line, with the persistent compilation
    cache `cache` ('' = none)."""
    script = os.path.join(ROOT, 'scripts', 'study.py')
    return [sys.executable, script, *args, f'--compilation_cache={cache}']


SCRIPT_ENV = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'}  # As conftest does.


def test_list_prints_each_runs_own_train_command(tmp_path):
    from absl import flags
    from ml_collections import config_flags

    work = str(tmp_path / 'w')
    # The grid and the constructed-solution sweep: each sweep run waits for its source.
    out = subprocess.run(
        _script('--config', TINY, '--workdir', work, '--list', '--config.train.steps=4',
                '--config.study.constructed_lrs=(0.01, 0.1)'),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = _sweep_config()
    config.train.steps = 4
    specs = study.expand_grid(config, work)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(specs) == 13 and not os.path.exists(work)
    assert sum(s.lr is not None for s in specs) == 10
    for line, spec in zip(lines, specs):
        command, comment = line.split('  # ')
        after = f', after {spec.source} finishes' if spec.source else ''
        assert comment == f'{spec.name}: missing{after}'
        argv = shlex.split(command)
        assert argv[0] == 'python' and argv[1].endswith(os.path.join('scripts', 'train.py'))
        # Parsed as train.py parses it, the command gives the run's config exactly.
        parsed = flags.FlagValues()
        args = ['train.py', *argv[2:]]
        config_flags.DEFINE_config_file('config', None, '', flag_values=parsed, sys_argv=args)
        flags.DEFINE_string('workdir', None, '', flag_values=parsed)
        parsed(args)
        got = parsed.config.to_dict()
        del got['study']
        assert (got, parsed.workdir) == (spec.config.to_dict(), spec.workdir), spec.name


def _comparable(workdir):
    """findings.json and report.md of a study, less wall times and absolute paths."""
    with open(os.path.join(workdir, 'findings.json')) as f:
        result = json.load(f)
    for run in result['runs'].values():
        del run['seconds']
    result['figures'] = sorted(result['figures'])
    with open(os.path.join(workdir, 'report.md')) as f:
        report = [line.rsplit(' | ', 1)[0] if line.startswith('| ') else line for line in f]
    return result, report


def test_two_processes_train_the_grid_once_between_them(tiny, xla_cache, tmp_path):
    """Two study processes on one workdir: each run is trained by exactly one of
    them, the constructed run after its source, and the report equals a serial study's."""
    work = str(tmp_path / 'parallel')
    command = _script('--config', TINY + ':parallel', '--workdir', work, cache=xla_cache)
    procs = [
        subprocess.Popen(command, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    names = ['plain8_bn_s0', 'resnet8_bn_s0', 'plain14from8_bn_s0']
    for name in names:
        trained = [err.count(f'study: training {name} ') for _, err in outs]
        assert sorted(trained) == [0, 1], (name, trained)
        rows = read_rows(os.path.join(work, 'runs', name))
        steps = [(r['step'], tuple(sorted(r))) for r in rows]
        assert len(steps) == len(set(steps))  # No row written twice.
    assert any('wrote' in out for out, _ in outs)
    # The serial study's runs (the `tiny` fixture trained them in one process), reported alone.
    serial = str(tmp_path / 'serial')
    for name in names:
        shutil.copytree(os.path.join(tiny[1], 'runs', name), os.path.join(serial, 'runs', name))
    study.run_study(tiny_config('parallel'), serial, trainer=must_not_train)
    assert _comparable(work) == _comparable(serial)


def test_failed_inspection_leaves_out_stale_figures_and_exits_4(tiny, xla_cache, tmp_path):
    """A damaged checkpoint and changed inspection options: the old figures and their findings
    are left out, the report says why, and the exit code is 4."""
    copy = str(tmp_path / 'study')
    shutil.copytree(tiny[1], copy)
    checkpoint = os.path.join(copy, 'runs', 'resnet8_bn_s0', 'checkpoints', '6', 'default')
    os.remove(sorted(glob.glob(os.path.join(checkpoint, '**', 'd', '*'), recursive=True))[0])
    # One figure asked for: the others would fail alike, each after loading the checkpoints.
    flags = ['--config.study.inspect.seed=1', "--config.study.inspect.figures=('spectrum',)"]
    out = subprocess.run(
        _script('--config', TINY, '--workdir', copy, *flags, cache=xla_cache),
        env=SCRIPT_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 4, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith('study incomplete')]
    assert 'figure 5' in line and 'see report.md, fix and rerun' in line
    with open(os.path.join(copy, 'findings.json')) as f:
        result = json.load(f)
    assert result['status'] == 'incomplete'
    with open(os.path.join(copy, 'report.md')) as f:
        report = f.read()
    assert '5' not in result['figures'] and 'inspect/spectrum/' not in report
    (line,) = [m for m in result['missing'] if m.startswith('figure 5 ')]
    assert 'study.inspect.seed=0 (now 1)' in line and 'cannot be restored' in line, line
    findings = {f['id']: f for f in result['findings']}
    assert findings['spectrum']['verdict'] == 'not available'
    assert '*Not shown: left out: drawn with study.inspect.seed=0 (now 1)' in report


def test_a_second_process_leaves_inspection_to_the_one_holding_it(tiny, tmp_path, monkeypatch):
    """While one process inspects and reports, another does neither."""
    from resjax import inspection
    from resjax.study import claims

    copy = str(tmp_path / 'study')
    shutil.copytree(tiny[1], copy)
    config = tiny_config()
    config.study.inspect.seed = 1  # Every figure would be drawn again.
    monkeypatch.setattr(inspection, 'inspect', lambda *a: pytest.fail('inspected twice'))
    handle, _ = claims.study_lock(copy, wait=False)
    try:
        result = study.run_study(config, copy, trainer=must_not_train)
    finally:
        handle.close()
    me = f'pid {os.getpid()} on {socket.gethostname()}'
    assert result == {'status': 'elsewhere', 'holder': me}


def _sweep_config(**study_keys):
    """The tiny study with the constructed-solution sweep at lrs 0.01 and 0.1 (and `study_keys`)."""
    config = tiny_config()
    config.study.constructed_lrs = (0.01, 0.1)
    config.study.update(study_keys)
    return config


def test_sweep_runs_names_configs_and_order(tmp_path):
    specs = study.expand_grid(_sweep_config(), str(tmp_path))
    names = [s.name for s in specs]
    sweep = [
        f'{net}_lr{lr}_bn_s0'
        for lr in ('0.01', '0.1')
        for net in ('plain14from8', 'resnet14from8', 'plain8from8', 'resnet8from8', 'plain14from14')
    ]
    # The sweep replaces the single constructed run (plain14from8_bn_s0).
    assert names == ['plain8_bn_s0', 'resnet8_bn_s0', 'plain14_bn_s0', *sweep]
    grid = {s.name: s for s in specs if s.lr is None}
    for i, s in enumerate(specs[3:], 3):
        t, p = s.config.train, s.config.probes
        assert s.lr == t.lr == float(s.name.split('_lr')[1].split('_')[0])
        assert (t.schedule, t.warmup_steps, t.steps) == ('constant', 0, 200)
        source = grid[s.source]
        assert t.init_from == source.workdir and names.index(s.source) < i  # Trains after it.
        assert (source.residual, source.depth) == (s.residual, s.source_depth)
        assert s.group is None  # Not averaged with the grid's points.
        assert p.hessian_every_steps > 0 and p.every_steps == p.init_angle_every_steps == 0
        assert (s.config.model.depth, s.config.model.residual) == (s.depth, s.residual)
    by_name = {s.name: s for s in specs}
    assert by_name['plain14from8_lr0.1_bn_s0'].source == 'plain8_bn_s0'
    assert by_name['resnet14from8_lr0.1_bn_s0'].source == 'resnet8_bn_s0'
    assert by_name['plain14from14_lr0.1_bn_s0'].label == 'plain-14 restarted at lr 0.1'
    # ResNet-8's recipe probes sharpness every 3 steps; the others' is off: once, at step 0.
    assert by_name['resnet8from8_lr0.1_bn_s0'].config.probes.hessian_every_steps == 3
    assert by_name['plain8from8_lr0.1_bn_s0'].config.probes.hessian_every_steps == 200
    # Without the sweep the grid is as before.
    assert [s.name for s in study.expand_grid(tiny_config(), str(tmp_path))][-1] == (
        'plain14from8_bn_s0'
    )


def test_sweep_runs_only_the_seeds_whose_grid_holds_every_source(tmp_path):
    config = _sweep_config(seeds=(0, 1), exclude=('depth=8 seed=1',))
    names = [s.name for s in study.expand_grid(config, str(tmp_path)) if s.lr is not None]
    assert names and all(n.endswith('_s0') for n in names)


@pytest.mark.parametrize(
    'study_keys, message',
    [
        ({'exclude': ('depth=8 residual=true',)}, "entry '8->14' starts from resnet8_bn_s0, "
         'which the grid leaves out'),
        ({'exclude': ('depth=14',)}, "entry '8->14' starts from plain14_bn_s0"),
        ({'constructed': ()}, 'study.constructed_lrs needs study.constructed entries'),
        ({'residual': (False,)}, 'add True to study.residual'),
        ({'constructed_lrs': (0.1, 0.0)}, 'tuple of positive learning rates'),
        ({'constructed_lrs': (0.1, 0.1)}, 'repeats a learning rate'),
        ({'constructed_steps': 0}, 'study.constructed_steps=0 must be a positive integer'),
    ],
)  # fmt: skip
def test_sweep_bad_config_is_one_line_error(tmp_path, study_keys, message):
    with pytest.raises(study.StudyError, match=message) as e:
        study.run_study(_sweep_config(**study_keys), str(tmp_path))
    assert '\n' not in str(e.value) and not os.listdir(tmp_path)
