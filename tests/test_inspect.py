"""Checkpoint inspection (resjax.inspection, resjax.landscape, scripts/inspect_checkpoint.py)
on one tiny digits run trained once for the module."""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from absl import flags
from jax.flatten_util import ravel_pytree

from resjax import config_lib, inspection, landscape, models, objective, runs, train, xla
from resjax.inspection import (
    common,
    interpolate,
    landscape1d,
    landscape2d,
    lesion,
    shattering,
    signals,
)
from resjax.probes import curvature

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'scripts', 'inspect_checkpoint.py')
OPTS = inspection.Options(examples=48, batch=24, grid=5, chunk=4)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    c = config_lib.default_config()
    c.dataset.name = 'digits'
    c.dataset.augment = 'none'
    c.model.depth = 8
    c.model.width = 0.25
    c.train.steps = 6
    c.train.batch_size = 32
    c.train.eval_batch_size = 120
    c.train.schedule = 'constant'
    c.train.lr = 0.05
    c.train.log_every_steps = 6
    c.train.eval_every_steps = 6
    c.train.checkpoint_every_steps = 3
    path = str(tmp_path_factory.mktemp('inspect') / 'run')
    train.train_and_evaluate(c, path)
    return path


@pytest.fixture(scope='module')
def run(workdir):
    return runs.load_run(workdir, batch=OPTS.batch)


def _hashes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, root)] = (
                    hashlib.sha256(fh.read()).hexdigest(),
                    os.stat(p).st_mtime_ns,
                )
    return out


def test_filter_normalised_directions_have_the_weight_filter_norms(run):
    params = run.state.params
    d = landscape.random_direction(jax.random.PRNGKey(0), params, 'zero')
    norms = jax.jit(landscape.filter_norms)
    for dn, wn in zip(jax.tree.leaves(norms(d)), jax.tree.leaves(norms(params))):
        np.testing.assert_allclose(dn, wn, rtol=1e-5)
    for dl, wl in zip(jax.tree.leaves(d), jax.tree.leaves(params)):
        if wl.ndim == 1:
            assert not np.any(dl)  # biases and BN parameters zeroed (Li et al.'s default)
    included = landscape.random_direction(jax.random.PRNGKey(0), params, 'include')
    bn = run.state.params['000_stem']['norm']['bn']['scale']
    np.testing.assert_array_equal(included['000_stem']['norm']['bn']['scale'], bn)


def _rescaled(run, c):
    """The same function in BN eval mode with every conv kernel multiplied by c: kernels x c,
    the following BN's running mean x c and variance x c^2."""
    params = flax.core.unfreeze(jax.tree.map(np.array, run.state.params))
    stats = flax.core.unfreeze(jax.tree.map(np.array, run.state.batch_stats))
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    flat_stats = flax.traverse_util.flatten_dict(stats, sep='/')
    for path in [p for p in flat if p.endswith('kernel') and flat[p].ndim == 4]:
        layer = path.rsplit('/', 1)[0]
        norm = layer.replace('conv', 'norm')
        flat[path] = flat[path] * c
        flat_stats[f'{norm}/bn/mean'] = flat_stats[f'{norm}/bn/mean'] * c
        flat_stats[f'{norm}/bn/var'] = flat_stats[f'{norm}/bn/var'] * c**2
    state = run.state.replace(
        params=flax.traverse_util.unflatten_dict(flat, sep='/'),
        batch_stats=flax.traverse_util.unflatten_dict(flat_stats, sep='/'),
    )
    return dataclasses.replace(run, state=state)


def test_normalised_1d_curve_is_invariant_to_conv_filter_scale(run):
    a = landscape1d.landscape_1d(run, OPTS)
    b = landscape1d.landscape_1d(_rescaled(run, 3.0), OPTS)
    assert np.ptp(a['loss']) > 0.1  # The curve is not flat: the test can fail.
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=2e-4)


def test_landscape_origin_is_the_eval_loss_on_the_same_examples(run):
    batches = common.probe_batches(run, OPTS)
    base = common.evaluate(run, batches)
    r = landscape2d.landscape_2d(run, dataclasses.replace(OPTS, grid=3))
    assert r['loss'].shape == (3, 3)
    np.testing.assert_allclose(r['loss'][1, 1], base['loss'], rtol=1e-5)
    np.testing.assert_allclose(r['accuracy'][1, 1], base['accuracy'])
    # Direct: mean cross-entropy in BN eval mode over those 48 examples.
    ex = runs.train_examples(run, OPTS.examples)
    variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
    logits = run.model.apply(variables, jnp.asarray(ex['image']), train=False)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ex['label'][:, None], 1))
    np.testing.assert_allclose(base['loss'], loss, rtol=1e-5)


def test_interpolation_endpoints_are_the_endpoint_losses(run, workdir):
    batches = common.probe_batches(run, OPTS)
    r = interpolate.interpolation(run, OPTS)
    loss = dict(zip(r['alphas'].tolist(), r['loss']))
    init = dataclasses.replace(run, state=xla.run_once(lambda: common.initial_state(run)))
    np.testing.assert_allclose(loss[0.0], common.evaluate(init, batches)['loss'], rtol=1e-5)
    np.testing.assert_allclose(loss[1.0], common.evaluate(run, batches)['loss'], rtol=1e-5)
    assert r['alphas'][0] == -0.5 and r['alphas'][-1] == 1.5
    other = runs.load_run(workdir, step=3, batch=OPTS.batch)
    r = interpolate.interpolation(run, OPTS, other)
    loss = dict(zip(r['alphas'].tolist(), r['loss']))
    np.testing.assert_allclose(loss[0.0], common.evaluate(other, batches)['loss'], rtol=1e-5)


def test_barrier_is_the_largest_rise_over_the_chord_on_0_1():
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    values = np.array([9.0, 2.0, 2.5, 3.0, 1.0, 1.0, 9.0])  # chord 2, 1.75, 1.5, 1.25, 1
    assert interpolate.barrier(alphas, values) == pytest.approx(1.5)
    assert interpolate.barrier(alphas, np.array([0, 2, 1.5, 1, 0.5, 0, 0.0])) == 0.0


def test_recomputed_bn_statistics_are_the_moments_of_each_bn_input(run):
    """Against numpy: the mean and variance of each BN layer's input (the conv before it, in
    a training-mode pass over the same images) over examples and pixels; eval mode with them
    is that training-mode pass."""
    images = jnp.asarray(runs.train_examples(run, 40)['image'])
    params = run.state.params
    stats = objective.recomputed_batch_stats(run.model, params, images)
    variables = {'params': params, 'batch_stats': run.state.batch_stats}
    logits, inter = run.model.apply(
        variables, images, train=True, mutable=['batch_stats', 'intermediates'],
        capture_intermediates=True,
    )  # fmt: skip
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(stats))
    assert len(flat) == len(jax.tree.leaves(run.state.batch_stats)) > 0
    for (*layer, norm, _, moment), value in flat.items():
        conv = inter['intermediates'][layer[0]][norm.replace('norm', 'conv')]['__call__'][0]
        x = np.asarray(conv, np.float64).reshape(-1, conv.shape[-1])
        want = x.mean(0) if moment == 'mean' else x.var(0)
        np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6)
    evaluated = run.model.apply({'params': params, 'batch_stats': stats}, images, train=False)
    np.testing.assert_allclose(evaluated, logits, rtol=1e-4, atol=1e-5)


def test_recomputed_interpolation_ends_at_the_training_mode_loss(run):
    """With the BN statistics recomputed on the probe examples themselves (one batch), the
    eval-mode loss at alpha = 1 is the checkpoint's training-mode loss there; the stored
    (EMA) statistics give another number, the same one as interpolating the statistics."""
    opts = dataclasses.replace(
        OPTS, batch=48, bn_examples=48, bn_stats='recompute', alpha_min=0.0, alpha_max=1.0,
        grid=3,
    )  # fmt: skip
    r = interpolate.interpolate_numbers(run, opts)
    batches = common.probe_batches(run, opts)
    np.testing.assert_allclose(r['loss_end'], common.evaluate(run, batches, 'train')['loss'],
                               rtol=1e-5)  # fmt: skip
    plain = interpolate.interpolate_numbers(run, dataclasses.replace(opts, bn_stats='interpolate'))
    np.testing.assert_allclose(plain['loss_end'], common.evaluate(run, batches)['loss'], rtol=1e-5)
    assert abs(plain['loss_end'] - r['loss_end']) > 1e-3  # 6 steps: the EMA is mostly init's
    assert r['bn_stats'] == 'recompute' and r['error_barrier'] >= 0


def test_recomputed_and_interpolated_statistics_agree_without_bn():
    c = config_lib.default_config().model
    c.depth, c.width, c.norm = 8, 0.25, 'none'
    model = models.create_model(c, 10)
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    start, end = (model.init(jax.random.key(i), x, train=False) for i in (1, 2))
    batch = {'image': x, 'label': jnp.arange(16) % 10}
    alphas = np.array([0.0, 0.3, 1.0])
    a = landscape.interpolation(objective.loss_and_accuracy(model, 'eval'), start, end, alphas,
                                batch)  # fmt: skip
    b = landscape.interpolation(objective.loss_and_accuracy_recomputed(model), start, end,
                                alphas, batch, state=x)  # fmt: skip
    assert objective.recomputed_batch_stats(model, start['params'], x) == {}
    np.testing.assert_array_equal(a['loss'], b['loss'])
    np.testing.assert_array_equal(a['accuracy'], b['accuracy'])


def _lesioned(run, block):
    v = lesion.lesion_variables(run, block)
    state = run.state.replace(params=v['params'], batch_stats=v['batch_stats'])
    return dataclasses.replace(run, state=state)


def test_lesion_removes_exactly_the_residual_branch(run):
    blocks = lesion.lesion_blocks(run)
    assert [b['shortcut'] for b in blocks] == ['identity', 'identity_pad', 'identity_pad']
    assert {b['lesion'] for b in blocks} == {'branch removed'}
    name = blocks[0]['block']
    # The block's output is its input: branch gone, identity shortcut kept.
    images = jnp.asarray(runs.train_examples(run, 8)['image'])
    lesioned = _lesioned(run, name)
    variables = {'params': lesioned.state.params, 'batch_stats': run.state.batch_stats}
    _, inter = run.model.apply(variables, images, train=False, mutable=['intermediates'])
    inter = inter['intermediates']
    np.testing.assert_array_equal(inter[name]['output'][0], inter['000_stem']['output'][0])
    # A real lesion changes the test loss; one of a block whose branch is already zero does not.
    batches = runs.test_batches(run)
    intact = common.evaluate(run, batches)['loss']
    assert abs(common.evaluate(lesioned, batches)['loss'] - intact) > 1e-3
    zero_branch = dataclasses.replace(run, state=lesioned.state)
    again = _lesioned(zero_branch, name)
    assert common.evaluate(again, batches)['loss'] == common.evaluate(zero_branch, batches)['loss']
    plain = run.config.copy_and_resolve_references()
    plain.model.residual = False
    # A plain net's lesions: the blocks that keep their shape (here the first of 3 stages).
    assert lesion.lesion_blocks(dataclasses.replace(run, config=plain)) == [
        {'block': name, 'shortcut': None, 'lesion': 'identity'}
    ]


def test_inspection_is_read_only_and_writes_real_pngs(workdir, tmp_path):
    before = _hashes(workdir)
    out = str(tmp_path / 'out')
    probes = ['summary', 'eval', 'landscape1d', 'landscape2d', 'interpolate', 'lesion']
    opts = dataclasses.replace(OPTS, eval_examples=48)
    results = inspection.inspect([workdir, workdir], probes, out, opts)
    assert _hashes(workdir) == before
    assert set(results['timings']) == set(probes)
    # Two workdirs on one figure: side-by-side contours, one line / bar set each.
    sizes = {
        'landscape1d': (420, 1100),
        'landscape2d': (460, 1040),
        'interpolate': (420, 1100),
        'lesion': (450, 700),
    }
    for name, (h, w) in sizes.items():
        image = matplotlib.image.imread(os.path.join(out, name + '.png'))
        assert image.shape[:2] == (h, w), name
        assert image.std() > 0.01  # Not blank.
    with open(os.path.join(out, 'landscape2d.json')) as f:
        numbers = json.load(f)['runs']
    assert len(numbers) == 2 and all('convexity' in r for r in numbers.values())
    npz = np.load(os.path.join(out, 'landscape2d.npz'))
    assert json.loads(str(npz['settings']))['seed'] == 0


def test_bad_inputs_are_one_line_errors(workdir, tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, '--workdir', str(tmp_path / 'nope'), '--out', str(tmp_path),
         '--probes', 'summary'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and 'nope' in lines[0] and 'does not exist' in lines[0], proc.stderr
    with pytest.raises(inspection.InspectError, match='no config.json'):
        runs.load_run(str(tmp_path))
    with pytest.raises(inspection.InspectError, match=r'step 5 not found.*\[3, 6\]'):
        runs.load_run(workdir, step=5)
    other = tmp_path / 'other'
    shutil.copytree(workdir, other)
    with open(other / 'config.json') as f:
        config = json.load(f)
    config['model']['width'] = 0.5
    with open(other / 'config.json', 'w') as f:
        json.dump(config, f)
    with pytest.raises(inspection.InspectError, match='does not match its config.json model'):
        runs.load_run(str(other))


def test_the_script_logs_no_orbax_records(workdir, tmp_path):
    # Inspection's stderr is as quiet as training's: orbax logs every read-only load at INFO
    # (one line of every array's CRC) and warns about the held snapshot's missing metadata.
    proc = subprocess.run(
        [sys.executable, SCRIPT, '--workdir', workdir, '--out', str(tmp_path), '--probes',
         'summary'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [x for x in proc.stderr.splitlines() if 'orbax' in x or 'checkpoint_manager' in x]
    assert not noise and len(proc.stderr) < 2000, proc.stderr[:2000]


def test_host_lanczos_finds_the_extremes_of_a_known_spectrum():
    eigenvalues = jnp.linspace(-2.0, 10.0, 50)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(1), (50, 50)))
    h = (q * eigenvalues) @ q.T
    alphas, betas, basis = curvature.lanczos(lambda v: h @ v, jnp.ones(50), 50)
    theta = curvature.tridiagonal_eigh(alphas, betas)[0]
    np.testing.assert_allclose([theta.min(), theta.max()], [-2.0, 10.0], atol=1e-3)
    np.testing.assert_allclose(basis @ basis.T, np.eye(len(alphas)), atol=1e-4)


def _mean_loss(run, num, train=False):
    """An independent mean cross-entropy over the first `num` probe examples as one unpadded
    batch, BN in eval (or train) mode: (flat params -> (loss, logits), flat params, unravel)."""
    ex = runs.train_examples(run, num)
    images, labels = jnp.asarray(ex['image']), jnp.asarray(ex['label'])
    flat, unravel = ravel_pytree(run.state.params)

    def loss(flat_params):
        variables = {'params': unravel(flat_params), 'batch_stats': run.state.batch_stats}
        if train:
            logits, _ = run.model.apply(variables, images, train=True, mutable=['batch_stats'])
        else:
            logits = run.model.apply(variables, images, train=False)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], 1)), logits

    return loss, flat, unravel


def test_hessian_spectrum_and_eigen_directions_probes(run, tmp_path):
    # 40 examples in batches of 24: the second is padded, and the mean must ignore the padding.
    opts = dataclasses.replace(
        OPTS, examples=40, lanczos_order=8, top_k=2, trace_samples=4, slq_draws=2
    )
    numbers = inspection.run_probe('hessian', [run], str(tmp_path), opts)[run.label]
    assert (
        json.load(open(tmp_path / 'hessian.json'))[run.label]['lambda_max'] == numbers['lambda_max']
    )
    top = numbers['top_eigenvalues']
    assert len(top) == 2 and top[0] == numbers['lambda_max'] >= top[1] > numbers['lambda_min']
    # Measured residuals of float32 Ritz pairs: never the 0.0 of the exact-arithmetic bound.
    residuals = numbers['top_residuals'] + [numbers['lambda_min_residual']]
    assert all(0 < r < numbers['lambda_max'] for r in residuals)
    assert numbers['num_hvps'] == 8 + 3 + 4 and np.isfinite(numbers['trace_stderr'])
    assert numbers['examples'] == 40
    # The same Lanczos and Hutchinson draws on an independent HVP of the mean loss over the 40
    # examples in one batch: the same numbers (a sum over batches would double them).
    loss, flat, unravel = _mean_loss(run, 40)
    grad = jax.grad(lambda p: loss(p)[0])
    hvp = jax.jit(lambda v: jax.jvp(grad, (flat,), (v,))[1]).lower(flat).compile(xla.FAST_COMPILE)
    key = jax.random.PRNGKey(opts.seed)
    direct = curvature.top_eigenpairs(hvp, jax.random.normal(key, flat.shape), 8, 2)
    np.testing.assert_allclose(top, direct['eigenvalues'], rtol=1e-3)
    np.testing.assert_allclose(numbers['lambda_min'], direct['lambda_min'], rtol=1e-3)
    trace, stderr, _ = curvature.hutchinson_trace(hvp, flat.size, jax.random.fold_in(key, 1), 4)
    np.testing.assert_allclose(
        [numbers['trace'], numbers['trace_stderr']], [trace, stderr], rtol=1e-3
    )
    spectrum = inspection.run_probe('spectrum', [run], str(tmp_path), opts)[run.label]
    assert spectrum['order'] == 8 and spectrum['ritz_max'] <= numbers['lambda_max'] * 1.5
    directions, info = landscape1d.landscape_directions(
        run, dataclasses.replace(opts, direction='eigen'), 2
    )
    assert info['eigenvalues'] == top  # Same seed and order: the same Lanczos run.
    norms = [
        float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(d['params']))))
        for d in directions
    ]
    np.testing.assert_allclose(norms, info['scaled_to_norm'], rtol=1e-5)
    # Each is an eigenvector: its Rayleigh quotient under the independent HVP is its
    # eigenvalue (within the measured residual), and the two are orthogonal.
    units = [ravel_pytree(d['params'])[0] / n for d, n in zip(directions, norms)]
    for y, eigenvalue, residual in zip(units, top, numbers['top_residuals']):
        assert abs(float(y @ hvp(y)) - eigenvalue) <= residual + 1e-3 * abs(eigenvalue)
    assert abs(float(units[0] @ units[1])) < 1e-3


def test_gradient_direction_is_the_mean_loss_gradient(run):
    directions, info = landscape1d.landscape_directions(
        run, dataclasses.replace(OPTS, direction='gradient'), 1
    )
    loss, flat, _ = _mean_loss(run, OPTS.examples)
    grad = np.asarray(xla.run_once(jax.grad(lambda p: loss(p)[0]), flat), np.float64)
    d = np.asarray(ravel_pytree(directions[0]['params'])[0], np.float64)
    cosine = d @ grad / (np.linalg.norm(d) * np.linalg.norm(grad))
    assert cosine > 1 - 1e-5
    np.testing.assert_allclose(info['gradient_norm'], np.linalg.norm(grad), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(d), np.linalg.norm(flat), rtol=1e-5)
    assert not np.any(ravel_pytree(directions[0]['batch_stats'])[0])  # Statistics stay put.


def test_signal_metrics_are_the_gradient_norms_of_the_mean_loss(run):
    ex = runs.train_examples(run, OPTS.batch)
    batch = {'image': jnp.asarray(ex['image']), 'label': jnp.asarray(ex['label'])}
    metrics = signals.signal_metrics(run, batch)
    # Independently: jax.grad of the mean loss in BN training mode, norm per layer.
    loss, flat, unravel = _mean_loss(run, OPTS.batch, train=True)
    (value, logits), grad = xla.run_once(jax.value_and_grad(loss, has_aux=True), flat)
    grads = flax.traverse_util.flatten_dict(unravel(grad), sep='/')
    layers = {k.rsplit('/', 1)[0] for k in grads if k.endswith('/kernel')}
    assert {k.split('/', 1)[1] for k in metrics if k.startswith('grad_norm/')} == layers | {
        'global'
    }
    for layer in layers:
        leaves = [v for k, v in grads.items() if k.rsplit('/', 1)[0] == layer]
        expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves))
        np.testing.assert_allclose(metrics[f'grad_norm/{layer}'], expected, rtol=1e-4)
    np.testing.assert_allclose(metrics['grad_norm/global'], np.linalg.norm(grad), rtol=1e-4)
    np.testing.assert_allclose(metrics['probe/loss'], value, rtol=1e-5)
    # dL/dlogits of the mean cross-entropy is (softmax - onehot) / N.
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    dlogits = (p - np.eye(p.shape[1])[ex['label']]) / len(p)
    np.testing.assert_allclose(metrics['act_grad_norm/logits'], np.linalg.norm(dlogits), rtol=1e-4)


def test_gradient_correlation_is_the_mean_cosine_of_input_gradients(run):
    opts = dataclasses.replace(OPTS, examples=3, shatter_points=6, shatter_radius=1.5)
    r = shattering.gradient_correlation(run, opts)
    # Independently, one input at a time: g(t) = d logit_y / dx at x + t u, then numpy cosines.
    ex = runs.train_examples(run, 3)
    u = np.array(jax.random.normal(jax.random.PRNGKey(opts.seed + 3), ex['image'].shape))
    u /= np.linalg.norm(u.reshape(3, -1), axis=1).reshape(-1, 1, 1, 1)
    variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
    logit = jax.jit(jax.grad(lambda x, y: run.model.apply(variables, x[None], train=False)[0, y]))
    ts = np.linspace(-1.5, 1.5, 6)
    g = np.array(
        [[np.ravel(logit(x + t * d, label)) for t in ts]
         for x, d, label in zip(ex['image'], u, ex['label'])],
        np.float64,
    )  # fmt: skip
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    expected = [
        np.mean([g[e, i] @ g[e, i + k] for e in range(3) for i in range(6 - k)])
        for k in range(1, 6)
    ]
    np.testing.assert_allclose(r['correlation'], expected, atol=1e-5)
    assert np.ptp(expected) > 0.01  # Not a constant: a wrong pairing would show.
    np.testing.assert_allclose(r['distance'], np.arange(1, 6) * 3.0 / 5)
    assert r['lag1_distance'] == pytest.approx(0.6) and r['examples'] == 3
    below = [d for d, c in zip(r['distance'], expected) if c < 0.5]
    assert r['half_correlation_distance'] == (pytest.approx(below[0]) if below else None)


def test_script_defines_one_flag_per_option_with_its_default_and_help():
    spec = importlib.util.spec_from_file_location('inspect_checkpoint_script', SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fv = flags.FlagValues()
    script.define_flags(fv)
    fields = dataclasses.fields(inspection.Options)
    assert set(fv) == {f.name for f in fields} | {'workdir', 'step', 'out', 'probes'}
    for f in fields:
        assert fv[f.name].default == f.default, f.name
        choices = f.metadata['choices']
        enum = f'<{"|".join(choices)}>: ' if choices else ''  # absl's prefix of an enum's help
        assert fv[f.name].help == enum + f.metadata['help'] and f.metadata['help'], f.name
        if choices:
            assert fv[f.name].parser.enum_values == list(choices), f.name
    fv(['prog', '--workdir', 'w', '--out', 'o'])
    assert script.options(fv) == inspection.Options()
    fv(['prog', '--workdir', 'w', '--out', 'o', '--range', '2', '--direction', 'eigen',
        '--to', 'x', '--grid', '7'])  # fmt: skip
    opts = script.options(fv)
    assert (opts.range, opts.direction, opts.to, opts.grid) == (2.0, 'eigen', 'x', 7)
    assert isinstance(opts.range, float)
    with pytest.raises(flags.IllegalFlagValueError):
        fv(['prog', '--bn_mode', 'batch'])
    with pytest.raises(inspection.InspectError, match=r"--biasbn='x'; use one of \('zero'"):
        inspection.validate(['summary'], dataclasses.replace(opts, biasbn='x'))


def test_grid_convexity_of_known_surfaces():
    xs = np.linspace(-1, 1, 11)
    gx, gy = np.meshgrid(xs, xs, indexing='ij')
    bowl = landscape.convexity_summary(gx**2 + 3 * gy**2, xs, xs)
    assert bowl['nonconvex_fraction'] == 0
    np.testing.assert_allclose([bowl['center_h_min'], bowl['center_h_max']], [2, 6], rtol=1e-6)
    np.testing.assert_allclose(bowl['mean_abs_ratio'], 1 / 3, rtol=1e-6)
    saddle = landscape.convexity_summary(gx**2 - gy**2, xs, xs)
    assert saddle['nonconvex_fraction'] == 1 and saddle['mean_abs_ratio'] == pytest.approx(1)
