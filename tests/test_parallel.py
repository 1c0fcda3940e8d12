"""Data parallelism on CPU: jit over 8 devices vs 1, pmap (synchronised and per-device BN),
two processes on localhost, the batch/device check and the TPU pod launcher's dry run.

A process's device count is fixed when JAX starts, so everything multi-device runs in
subprocesses (tests/parallel_worker.py, scripts/train.py), started together where they can
run at once, with timeouts, and always killed in `finally`.
"""

import json
import os
import socket
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import parallel_worker
import pytest

from resjax.metrics import read_metrics

ROOT = os.path.join(os.path.dirname(__file__), '..')
TIMEOUT = 240  # seconds for all the subprocesses of a test together
SMALL = [f'--config.{k}={v}' for k, v in parallel_worker.OVERRIDES.items()] + [
    '--config.train.log_every_steps=1',
    '--config.train.eval_every_steps=1000',
    '--config.train.checkpoint_every_steps=2',
    '--config.probes.every_steps=0',
]


def _start(command, devices):
    env = {
        **os.environ,
        'JAX_NUM_CPU_DEVICES': str(devices),
        'JAX_PLATFORMS': 'cpu',
        'JAX_DISABLE_MOST_OPTIMIZATIONS': '1',
    }
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(proc, deadline):
    """(returncode, stdout, stderr) of `proc`, killed if it outlives `deadline`."""
    try:
        out, err = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        proc.kill()
    return proc.returncode, out, err


def _train_command(workdir, *overrides):
    return [
        sys.executable,
        os.path.join(ROOT, 'scripts', 'train.py'),
        f'--config={parallel_worker.CONFIG}',
        f'--workdir={workdir}',
        *SMALL,
        *overrides,
    ]


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _saved(workdir, step):
    """A checkpoint's params and BN statistics, flattened, whatever topology wrote it."""
    path = os.path.join(workdir, 'checkpoints', str(step), 'default')
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        dict(checkpointer.metadata(path).item_metadata),
    )
    state = checkpointer.restore(path, target)
    tree = {'params': state['params'], 'batch_stats': state['batch_stats']}
    return flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def _max_diff_to_reference(saved, reference, step):
    assert len(saved) == len([k for k in reference if k.startswith(f'{step}/')])
    return max(float(np.max(np.abs(v - reference[f'{step}/{k}']))) for k, v in saved.items())


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Everything multi-device, started at once (2 cores: compiles overlap waits):

    - the worker (8 devices): the step-level comparisons and the 1-device reference;
    - two processes x 2 devices, `jax.distributed` on localhost, jit: steps 0-1 (checkpoint 2);
    - scripts/train.py with a batch that 8 devices cannot share (must exit 2 at once);
    - then one process x 4 devices resumes that workdir under pmap with synchronised BN and
      the signal probes on for step 2. (The sharpness probe is left out: its compiles would
      cost ~15 s of CPU, and under pmap it runs the jit code path on replica 0's state.)
    """
    root = tmp_path_factory.mktemp('parallel')
    two = root / 'two'
    deadline = time.time() + TIMEOUT
    port = _free_port()
    procs = []
    try:
        worker = _start([sys.executable, parallel_worker.__file__, str(root / 'reference.npz')], 8)
        procs.append(worker)
        distributed = [
            _start(
                _train_command(
                    two,
                    '--config.train.steps=2',
                    '--distributed',
                    f'--coordinator_address=localhost:{port}',
                    '--num_processes=2',
                    f'--process_id={i}',
                ),
                2,
            )
            for i in range(2)
        ]
        procs += distributed
        bad_batch = _start(_train_command(root / 'bad', '--config.train.batch_size=36'), 8)
        procs.append(bad_batch)
        results = {'distributed': [_finish(p, deadline) for p in distributed]}
        results['bad_batch'] = _finish(bad_batch, deadline)
        resume = _start(
            _train_command(
                two,
                '--config.train.steps=3',
                '--config.parallel.mode=pmap',
                '--config.parallel.sync_bn=True',
                '--config.probes.every_steps=2',
            ),
            4,
        )
        procs.append(resume)
        results['resume'] = _finish(resume, deadline)
        results['worker'] = _finish(worker, deadline)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    results['two'], results['bad_workdir'] = two, root / 'bad'
    reference = root / 'reference.npz'  # missing if the worker failed: its test says why
    results['reference'] = dict(np.load(reference)) if reference.exists() else {}
    return results


def test_jit_on_8_devices_and_pmap_match_one_device_and_pmap_bn_is_per_device(runs):
    code, out, err = runs['worker']
    assert code == 0, err[-3000:]
    r = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))  # the measured differences (pytest -s)
    assert r['devices'] == 8
    for name in ('jit', 'pmap_sync'):  # 3 steps; BN over the global batch of 32
        d = r[name]
        assert d['loss'] < 1e-5 and d['grads'] < 1e-4, d
        assert d['params'] < 1e-5 and d['batch_stats'] < 1e-5, d
        assert d['probe_keys_equal'] and d['probes'] < 1e-3, d  # relative
    assert r['hvp_relative'] < 1e-4, r['hvp_relative']  # the global-batch HVP, sharded
    local = r['pmap_local']
    # Per-device BN: the loss is the mean of the 8 devices' own (4-example BN) losses, not the
    # global-BN loss; the running statistics are device 0's, on every replica.
    assert local['loss_vs_mean_of_devices'] < 1e-5 and local['loss_vs_global_bn'] > 1e-3, local
    assert local['mean_vs_device0'] < 1e-6 and local['var_vs_device0'] < 1e-6, local
    assert local['mean_vs_global'] > 1e-3, local
    assert local['replicas_equal'], local


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(runs):
    for code, _, err in runs['distributed']:
        assert code == 0, err[-3000:]
    code, _, err = runs['resume']
    assert code == 0, err[-3000:]
    assert 'Resumed from step 2' in err
    two, reference = runs['two'], runs['reference']

    # 2 processes x 2 devices (each reading its half of every batch) == 1 device.
    assert _max_diff_to_reference(_saved(two, 2), reference, 2) < 1e-5
    # ... and resumed by 1 process x 4 devices under pmap (synchronised BN): still the same.
    assert _max_diff_to_reference(_saved(two, 3), reference, 3) < 1e-5

    rows = read_metrics(str(two))
    assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3]  # one writer, no repeats
    at2 = {k for r in rows if r['step'] == 2 for k in r}
    assert {'act_grad_norm/logits', 'act_std/000_stem/conv', 'grad_norm/head/dense'} <= at2
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert any('eval/accuracy' in r for r in rows if r['step'] == 3)


def test_batch_not_divisible_by_devices_is_one_line_exit_2(runs):
    code, _, err = runs['bad_batch']
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(('I', 'W', ' '))]
    assert lines == [
        'error: train.batch_size=36 does not divide by the 8 devices; pick a multiple of 8'
    ], err[-2000:]
    assert not (runs['bad_workdir'] / 'checkpoints').exists()


def test_tpu_pod_launcher_dry_run_prints_the_gcloud_commands():
    out = subprocess.run(
        [
            'bash',
            os.path.join(ROOT, 'scripts', 'launch_tpu_pod.sh'),
            '--dry-run',
            '--name=resjax-pod',
            '--zone=us-central2-b',
            '--accelerator=v4-32',
            '--',
            '--config=configs/cifar10_resnet20.py',
            '--workdir=/mnt/runs/r20',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, 'PATH': '/usr/bin:/bin'},  # no gcloud needed for a dry run
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    where = '--zone=us-central2-b'
    assert lines[:3] == [
        f'gcloud compute tpus tpu-vm create resjax-pod {where} --accelerator-type=v4-32 '
        '--version=tpu-ubuntu2204-base',
        'git archive --format=tar.gz -o /tmp/resjax-resjax-pod.tar.gz HEAD',
        'gcloud compute tpus tpu-vm scp /tmp/resjax-resjax-pod.tar.gz resjax-pod:resjax.tar.gz '
        f'{where} --worker=all',
    ], lines
    ssh = f"gcloud compute tpus tpu-vm ssh resjax-pod {where} --worker=all '--command="
    assert len(lines) == 5 and all(line.startswith(ssh) for line in lines[3:]), lines
    install, train = (line[len(ssh) : -1] for line in lines[3:])
    assert 'pip install -q -U "jax[tpu]"' in install and 'pip install -q -e ".[tfds]"' in install
    assert train == (
        'cd ~/resjax && python3 scripts/train.py --distributed '
        '--config=configs/cifar10_resnet20.py --workdir=/mnt/runs/r20'
    ), train
