"""Subprocess side of tests/test_parallel.py: a process's device count is fixed when JAX
starts, so multi-device checks cannot run inside pytest's process.

`python tests/parallel_worker.py OUT.npz` (run with 8 CPU devices) takes the train steps of
`small_config()` (the config scripts/train.py gets with `OVERRIDES`) with probes, under jit on
one device (the reference), jit over all devices, pmap with synchronised BN, and pmap with
per-device BN. It prints one JSON line of differences and checks, and saves the reference's
parameters and BN statistics after each step to OUT.npz (`params/<step>/<path>`), against
which the test compares what scripts/train.py writes in other layouts.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resjax import data, models, objective, optim, parallel, steps, xla
from resjax.probes import curvature, hessian

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
CONFIG = os.path.join(ROOT, 'configs', 'digits_resnet20.py')
# Also passed to scripts/train.py as --config.<key>=<value> by the test.
OVERRIDES = {
    'model.depth': 8,
    'model.width': 0.25,
    'train.batch_size': 32,
    'train.eval_batch_size': 120,
    'train.schedule': 'constant',
    'train.warmup_steps': 0,
}
NUM_STEPS = 3


def small_config():
    """configs/digits_resnet20.py with OVERRIDES."""
    spec = importlib.util.spec_from_file_location('digits_config', CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in OVERRIDES.items():
        group, name = key.split('.')
        config[group][name] = value
    return config


def max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def run(step_fn, state, put, batches, host):
    """Probe steps on `batches`: losses, probe rows, params and BN statistics after each."""
    losses, probes, params, stats = [], [], [host(state.params)], [host(state.batch_stats)]
    for batch in batches:
        state, metrics = step_fn(state, put(batch))
        metrics = host(metrics)
        losses.append(float(metrics['train']['train/loss']))
        probes.append(metrics['probes'])
        params.append(host(state.params))
        stats.append(host(state.batch_stats))
    return losses, probes, params, stats


def first_gradient(params, config):
    """The first update of SGD with momentum and L2 decay is -lr (g + wd w): g from it."""
    lr, wd = config.train.lr, config.train.weight_decay
    return jax.tree.map(lambda p0, p1: (p0 - p1) / lr - wd * p0, params[0], params[1])


def compare(ref, other, config) -> dict:
    losses, probes, params, stats = other
    return {
        'loss': max_diff(ref[0], losses),
        'grads': max_diff(first_gradient(ref[2], config), first_gradient(params, config)),
        # Relative, with a floor: some probes (act_mean after BN) are ~0.
        'probes': max(
            max(abs(p[k] - q[k]) / max(abs(p[k]), 1e-3) for k in p)
            for p, q in zip(ref[1], probes, strict=True)
        ),
        'probe_keys_equal': all(set(p) == set(q) for p, q in zip(ref[1], probes, strict=True)),
        'params': max_diff(ref[2][-1], params[-1]),
        'batch_stats': max_diff(ref[3][-1], stats[-1]),
    }


def main(out_path: str) -> dict:
    config = small_config()
    dataset = data.create_dataset(config)
    it = dataset.train_batches(0)
    batches = [next(it) for _ in range(NUM_STEPS)]
    model = models.create_model(config.model, dataset.num_classes)
    tx = optim.create_optimizer(config.train)
    schedule = optim.learning_rate_schedule(config.train)
    init = functools.partial(steps.create_train_state, model, tx, dataset.image_shape, config.seed)
    state0 = jax.device_get(xla.run_once(init))
    make_step = functools.partial(steps.make_train_step, tx=tx, schedule=schedule, probes=True)
    pmap_host = lambda tree: jax.tree.map(parallel.first_replica, tree)
    axis = parallel.DATA_AXIS

    # The reference: one device.
    one = jax.devices()[0]
    ref = run(
        jax.jit(make_step(model)),
        jax.device_put(state0, one),
        lambda b: jax.device_put(b, one),
        batches,
        jax.device_get,
    )
    # jit over a mesh of all devices: BN over the global batch.
    mesh = parallel.create_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    on_mesh = run(
        jax.jit(make_step(model)),
        jax.device_put(state0, replicated),
        functools.partial(parallel.shard_batch, mesh=mesh),
        batches,
        jax.device_get,
    )
    # pmap with synchronised BN: the model's BatchNorm averages over the pmap axis.
    sync_model = models.create_model(config.model, dataset.num_classes, axis)
    synced = run(
        parallel.pmap_train_step(make_step(sync_model, axis_name=axis)),
        parallel.replicate(state0),
        parallel.split_batch,
        batches,
        pmap_host,
    )
    out = {
        'devices': jax.device_count(),
        'jit': compare(ref, on_mesh, config),
        'pmap_sync': compare(ref, synced, config),
    }

    # The curvature probes' HVP of the global-batch mean loss (BN train mode: global-batch
    # statistics under jit): the batch sharded over all devices vs on one device.
    @jax.jit
    def hvp(params, batch_stats, batch, v):
        loss = hessian.mean_loss_fn(model, batch_stats, batch, 'train')
        return curvature.hvp(loss, params, v)

    v = jax.tree.map(lambda p: np.cos(np.arange(p.size)).reshape(p.shape), state0.params)
    args = (state0.params, state0.batch_stats)
    hv_one = hvp(*jax.device_put((*args, batches[0], v), one))
    hv_mesh = hvp(*jax.device_put(args, replicated), parallel.shard_batch(batches[0], mesh), v)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(jax.device_get(hv_one)))
    out['hvp_relative'] = max_diff(jax.device_get(hv_one), jax.device_get(hv_mesh)) / scale

    # pmap with per-device BN, one step: each device normalises with its own 4 examples'
    # statistics; afterwards every device holds device 0's running statistics.
    step = parallel.pmap_train_step(steps.make_train_step(model, tx, schedule, axis_name=axis))
    split = parallel.split_batch(batches[0])
    state, metrics = step(parallel.replicate(state0), split)

    @jax.jit
    def per_device_losses(images, labels):
        def loss(x, y):
            logits, _ = model.apply(
                {'params': state0.params, 'batch_stats': state0.batch_stats},
                x,
                train=True,
                mutable=['batch_stats'],
            )
            return jnp.mean(objective.cross_entropy(logits, y))

        return jax.vmap(loss)(images, labels)

    losses = per_device_losses(split['image'], split['label'])
    # The stem BN's input by hand: a 3x3 'SAME' convolution of the image with the stem kernel.
    kernel = state0.params['000_stem']['conv']['kernel']
    conv = lambda x: np.asarray(
        jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )
    )
    # Flax's running statistics: 0.9 old + 0.1 batch (biased variance); initially 0 and 1.
    expect = lambda h: (0.1 * h.mean((0, 1, 2)), 0.9 + 0.1 * h.var((0, 1, 2)))
    stem = pmap_host(state.batch_stats)['000_stem']['norm']['bn']
    loss = float(parallel.first_replica(metrics['train/loss']))
    out['pmap_local'] = {
        'loss_vs_mean_of_devices': abs(loss - float(np.mean(losses))),
        'loss_vs_global_bn': abs(loss - ref[0][0]),
        'mean_vs_device0': max_diff(stem['mean'], expect(conv(split['image'][0]))[0]),
        'var_vs_device0': max_diff(stem['var'], expect(conv(split['image'][0]))[1]),
        'mean_vs_global': max_diff(stem['mean'], expect(conv(batches[0]['image']))[0]),
        'replicas_equal': all(
            all(np.array_equal(s.data, x.addressable_shards[0].data) for s in x.addressable_shards)
            for x in jax.tree.leaves(state)
        ),
    }
    out['loss'] = ref[0]

    saved = {}
    for step_index, (params, stats) in enumerate(zip(ref[2], ref[3], strict=True)):
        tree = {'params': params, 'batch_stats': stats}
        for path, value in flax.traverse_util.flatten_dict(tree, sep='/').items():
            saved[f'{step_index}/{path}'] = np.asarray(value)
    np.savez(out_path, **saved)
    return out


if __name__ == '__main__':
    print(json.dumps(main(sys.argv[1]), default=float))
