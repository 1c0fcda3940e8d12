"""Faults of the disk under a running training process: a read-only or full checkpoint
directory, a full workdir, a read-only metrics file, a workdir deleted mid-run. Each must end
the process with exit code 2 and one line, at the next step, with what was saved kept whole.

Read-only files are read-only bind mounts and full disks small tmpfs mounts (root ignores
`chmod -w`); a test is skipped where mounts are not allowed.
"""

import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resjax import checkpoint
from resjax.metrics import read_metrics

ROOT = os.path.join(os.path.dirname(__file__), '..')
EVERY, STEPS = 50, 200  # checkpoint interval, steps: an interval is long enough to mount in
RUN = [
    '--config.model.depth=8',
    '--config.model.width=0.25',
    '--config.train.batch_size=32',
    '--config.train.log_every_steps=5',
    '--config.train.eval_every_steps=1000',
    '--config.probes.every_steps=0',
    f'--config.train.steps={STEPS}',
    f'--config.train.checkpoint_every_steps={EVERY}',
]


def _start(workdir, *overrides):
    command = [
        sys.executable,
        os.path.join(ROOT, 'scripts', 'train.py'),
        '--config',
        os.path.join(ROOT, 'configs', 'digits_resnet20.py'),
        '--workdir',
        str(workdir),
        *RUN,
        *overrides,
    ]
    env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc, timeout=120):
    """(exit code, stderr); a process still running after `timeout` s failed to exit."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f'the run did not exit within {timeout} s: {proc.communicate()[1][-2000:]}')
    return proc.returncode, err


def _wait_for(path, proc):
    deadline = time.time() + 120
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f'no {path}: {proc.communicate()[1][-2000:]}')
        time.sleep(0.02)


def _mount(*args):
    result = subprocess.run(['mount', *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f'mount {args} is not allowed here: {result.stderr.strip()}')


def _umount(path):
    subprocess.run(['umount', '-l', str(path)], check=False)


def _error_lines(err):
    """stderr without absl's log lines (I/W + date) and their continuation lines."""
    return [line for line in err.strip().splitlines() if not line.startswith(('W', 'I', ' '))]


def _last_train_row(workdir):
    return max(r['step'] for r in read_metrics(str(workdir)) if 'train/loss' in r)


def _check_stopped_at_the_failed_save(workdir, err, *words):
    lines = _error_lines(err)
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert 'Traceback' not in err, err[-3000:]
    manager = checkpoint.checkpoint_manager(str(workdir), read_only=True)
    saved = manager.all_steps()
    assert saved and saved[-1] < STEPS, saved
    assert not [p for p in os.listdir(workdir / 'checkpoints') if 'orbax-checkpoint-tmp' in p]
    failed = saved[-1] + EVERY
    # Stopped at the step after the failed save: no training row after it.
    assert _last_train_row(workdir) <= failed, (saved, _last_train_row(workdir))
    leaves = jax.tree.leaves(manager.restore(saved[-1], args=ocp.args.StandardRestore()))
    assert len(leaves) > 50 and all(np.isfinite(x).all() for x in leaves)  # Saved: whole.


def test_a_read_only_checkpoint_directory_mid_run_stops_the_run_and_the_process(tmp_path):
    work = tmp_path / 'run'
    proc = _start(work)
    _wait_for(work / 'checkpoints' / str(EVERY), proc)
    ckpts = work / 'checkpoints'
    _mount('--bind', '-o', 'ro', ckpts, ckpts)
    try:
        code, err = _finish(proc)
    finally:
        _umount(ckpts)
    assert code == 2, err[-2000:]
    _check_stopped_at_the_failed_save(work, err, 'checkpoint save', str(ckpts), 'Read-only')


def test_a_checkpoint_disk_filled_mid_run_stops_the_run_at_the_next_save(tmp_path):
    work = tmp_path / 'run'
    ckpts = work / 'checkpoints'
    ckpts.mkdir(parents=True)
    _mount('-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', ckpts)
    try:
        proc = _start(work)
        first = ckpts / str(EVERY)
        _wait_for(first, proc)
        time.sleep(0.2)  # orbax renames the finished step directory last
        used = sum(
            os.stat(os.path.join(d, n)).st_blocks * 512 for d, _, ns in os.walk(first) for n in ns
        )
        fill = shutil.disk_usage(ckpts).free - used - 4096  # the last one's size + 4 KiB free
        with open(ckpts / 'filler', 'wb') as f:
            f.write(b'\0' * max(fill, 0))
        code, err = _finish(proc)
        assert code == 2, err[-2000:]
        _check_stopped_at_the_failed_save(work, err, 'no space left', str(ckpts), 'KiB')
    finally:
        _umount(ckpts)


def test_a_full_workdir_disk_is_one_line_with_sizes(tmp_path):
    work = tmp_path / 'run'
    work.mkdir()
    _mount('-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', work)
    try:
        proc = _start(work)
        _wait_for(work / 'checkpoints' / str(EVERY), proc)
        with open(work / 'filler', 'wb') as f:
            try:
                while True:
                    f.write(b'\0' * 65536)
                    f.flush()
            except OSError:
                pass
        code, err = _finish(proc)
        assert code == 2, err[-2000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and 'no space left' in lines[0] and 'KiB free' in lines[0], lines
        assert 'Traceback' not in err, err[-3000:]
    finally:
        _umount(work)


def test_a_read_only_metrics_file_mid_run_or_at_resume_and_a_deleted_workdir(tmp_path):
    # Mid-run: one line naming the file, exit 2.
    work = tmp_path / 'run'
    proc = _start(work)
    _wait_for(work / 'checkpoints' / str(EVERY), proc)
    metrics_file = work / 'metrics.jsonl'
    _mount('--bind', '-o', 'ro', metrics_file, metrics_file)
    try:
        code, err = _finish(proc)
        assert code == 2, err[-2000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and str(metrics_file) in lines[0], lines
        assert 'Traceback' not in err, err[-3000:]
        # At resume: refused before anything in the workdir changes.
        config_before = (work / 'config.json').read_bytes()
        code, err = _finish(_start(work, f'--config.train.steps={STEPS + 10}'))
        assert code == 2, err[-2000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and 'not writable' in lines[0] and 'metrics.jsonl' in lines[0]
        assert (work / 'config.json').read_bytes() == config_before
    finally:
        _umount(metrics_file)
    # The workdir deleted under a running run.
    gone = tmp_path / 'gone'
    proc = _start(gone)
    _wait_for(gone / 'checkpoints' / str(EVERY), proc)
    shutil.rmtree(gone)
    code, err = _finish(proc)
    assert code == 2, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and str(gone) in lines[0], lines
    assert 'Traceback' not in err, err[-3000:]
