"""Faults in a real process: preemption (SIGTERM), resume, bad input. Subprocesses, short
timeouts, always reaped."""

import os
import signal
import subprocess
import sys
import time

import pytest

from resjax import checkpoint
from resjax.metrics import read_metrics

ROOT = os.path.join(os.path.dirname(__file__), '..')
SMALL = [
    '--config.model.depth=8',
    '--config.model.width=0.25',
    '--config.train.batch_size=32',
    '--config.train.log_every_steps=5',
    '--config.train.eval_every_steps=1000',
    '--config.probes.every_steps=0',
]


def _train(workdir, *overrides, wait=True):
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'scripts', 'train.py'),
        '--config',
        os.path.join(ROOT, 'configs', 'digits_resnet20.py'),
        '--workdir',
        str(workdir),
        *SMALL,
        *overrides,
    ]
    env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_resume_matches(tmp_path):
    # A constant lr: the schedule must not depend on train.steps, which the resume changes.
    steps = [
        '--config.train.steps=400',
        '--config.train.checkpoint_every_steps=20',
        '--config.train.schedule=constant',
        '--config.train.warmup_steps=0',
    ]
    proc = _train(tmp_path / 'pre', *steps, wait=False)
    try:
        deadline = time.time() + 200
        manager_dir = tmp_path / 'pre' / 'checkpoints'
        while (
            time.time() < deadline
            and proc.poll() is None
            and not (manager_dir.exists() and any(p.name.isdigit() for p in manager_dir.iterdir()))
        ):
            time.sleep(0.5)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        sent = time.time()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert time.time() - sent < 30
        assert 'Preempted' in err
    finally:
        proc.kill()
    saved = checkpoint.checkpoint_manager(str(tmp_path / 'pre'), read_only=True).latest_step()
    assert 20 < saved < 400 and saved % 20  # saved at the signal, not only at an interval
    # Short runs to compare: resume the preempted run to `saved + 10`, and an uninterrupted one.
    end = [
        f'--config.train.steps={saved + 10}',
        '--config.train.checkpoint_every_steps=20',
        '--config.train.allow_config_change=True',
        *steps[2:],
    ]
    assert _train(tmp_path / 'pre', *end)[0] == 0
    assert _train(tmp_path / 'full', *end)[0] == 0
    rows = {
        d: {r['step']: r for r in read_metrics(str(tmp_path / d)) if 'train/loss' in r}
        for d in ('pre', 'full')
    }
    last = saved + 10
    assert rows['pre'][last]['train/loss'] == rows['full'][last]['train/loss']
    steps_logged = [r['step'] for r in read_metrics(str(tmp_path / 'pre')) if 'train/loss' in r]
    assert len(steps_logged) == len(set(steps_logged))  # no step logged twice


@pytest.mark.parametrize(
    'override,message',
    [
        ('--config.train.nosuchkey=1', 'nosuchkey'),
        ('--config.model.depth=21', '6n+2'),
        ('--config.dataset.name=imagenet21k', 'dataset.name'),
        ('--config.train.batch_size=0', 'batch_size'),
    ],
)
def test_bad_config_is_one_line_and_exit_code_2(tmp_path, override, message):
    code, err = _train(tmp_path, override)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith(('W', 'I'))]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert not (tmp_path / 'checkpoints').exists()


def test_incompatible_workdir_is_refused(tmp_path):
    assert (
        _train(tmp_path, '--config.train.steps=2', '--config.train.checkpoint_every_steps=2')[0]
        == 0
    )
    code, err = _train(tmp_path, '--config.train.steps=4', '--config.model.residual=False')
    assert code == 2 and 'allow_config_change' in err
    assert checkpoint.checkpoint_manager(str(tmp_path), read_only=True).all_steps() == [2]


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    code, err = _train(blocker / 'run')
    assert code == 2 and 'workdir' in err
