import functools
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resjax import config_lib, data, models, objective, plots, steps, train, xla
from resjax.probes import signals


def _setup(depth=8, residual=True, norm='batch', width=0.5, n=32, **kw):
    c = config_lib.default_config().model
    c.update(depth=depth, residual=residual, norm=norm, width=width, **kw)
    model = models.create_model(c, 10)
    images, labels, _, _ = data.load_digits()
    batch = {'image': jnp.asarray(images[:n]), 'label': jnp.asarray(labels[:n])}
    init = functools.partial(model.init, train=False)
    variables = xla.run_once(init, jax.random.PRNGKey(0), batch['image'][:1])
    return model, variables, batch


@functools.lru_cache
def _probe_fn(model):
    return jax.jit(lambda p, bs, b: steps.loss_and_grads(model, p, bs, b, probes=True))


def _signals(model, variables, batch):
    loss, logits, new_vars, grads, act_grads = _probe_fn(model)(
        variables['params'], variables.get('batch_stats', {}), batch
    )
    out = signals.weight_signals(variables['params'], grads, grads)
    out.update(signals.activation_signals(new_vars['intermediates'], act_grads))
    return jax.device_get(out), grads, act_grads, logits, new_vars


def test_per_layer_squared_gradient_norms_sum_to_the_global_one():
    model, variables, batch = _setup(norm='none')  # every parameter is in a conv or dense layer
    sig, grads, *_ = _signals(model, variables, batch)
    _, per_layer = signals.profile(sig, 'grad_norm')
    np.testing.assert_allclose(
        np.sum(np.square(per_layer)), float(optax.tree.norm(grads)) ** 2, rtol=1e-5
    )
    # With BN, the BN layers carry the rest: all layers together give the global norm.
    model, variables, batch = _setup()
    _, grads, *_ = _signals(model, variables, batch)
    norms = signals.layer_norms(grads)
    # One BN layer after each of ResNet-8's 7 convs, named in forward order, each with a
    # gradient.
    bn = [k for k in norms if k.endswith('/bn')]
    blocks = [f'00{i}_stage{i}_block1/norm{j}/bn' for i in (1, 2, 3) for j in (1, 2)]
    assert bn == ['000_stem/norm/bn', *blocks]
    assert all(float(norms[k]) > 0 for k in bn)
    np.testing.assert_allclose(
        sum(float(v) ** 2 for v in norms.values()), float(optax.tree.norm(grads)) ** 2, rtol=1e-5
    )


def test_logit_gradients_are_softmax_minus_onehot_over_batch():
    model, variables, batch = _setup()
    _, _, act_grads, logits, _ = _signals(model, variables, batch)
    expected = (jax.nn.softmax(logits) - jax.nn.one_hot(batch['label'], 10)) / len(logits)
    np.testing.assert_allclose(act_grads['logits'], expected, atol=1e-7)


def test_activation_gradients_match_finite_differences():
    # Independent of reverse mode: inject eps * d at a block output through the model's
    # 'perturbations' variables and difference the forward loss, in float64.
    with jax.enable_x64(True):
        model, variables, batch = _setup(norm='none', n=8, dtype='float64')
        variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
        batch = {'image': batch['image'].astype(jnp.float64), 'label': batch['label']}
        _, _, act_grads, _, _ = _signals(model, variables, batch)
        zeros = signals.perturbation_zeros(model, variables, (batch['image'],), train=True)

        def loss_at(perturbations):
            logits = model.apply(
                {'params': variables['params'], 'perturbations': perturbations},
                batch['image'],
                train=True,
            )
            return jnp.mean(objective.cross_entropy(logits, batch['label']))

        for block in ('000_stem', '002_stage2_block1'):
            d = jax.random.normal(jax.random.PRNGKey(1), zeros[block]['output'].shape, jnp.float64)
            at = lambda eps, b=block, d=d: loss_at({**zeros, b: {**zeros[b], 'output': eps * d}})
            eps = 1e-5
            fd = (at(eps) - at(-eps)) / (2 * eps)
            analytic = jnp.vdot(act_grads[block]['output'], d)
            np.testing.assert_allclose(fd, analytic, rtol=1e-6)


def test_batchnorm_responses_have_unit_std_and_zero_mean():
    model, variables, batch = _setup()
    sig, *_ = _signals(model, variables, batch)
    _, stds = signals.profile(sig, 'act_std')
    _, means = signals.profile(sig, 'act_mean')
    np.testing.assert_allclose(stds, 1.0, atol=1e-3)
    np.testing.assert_allclose(means, 0.0, atol=1e-4)
    _, zeros = signals.profile(sig, 'relu_zero')
    assert all(0.2 < z < 0.8 for z in zeros)


def test_gradient_scale_coefficient_definition():
    model, variables, batch = _setup()
    sig, *_ = _signals(model, variables, batch)
    block = '001_stage1_block1'
    expected = (sig[f'act_grad_norm/{block}'] * sig[f'act_norm/{block}']) / (
        sig['act_grad_norm/logits'] * sig['act_norm/logits']
    )
    np.testing.assert_allclose(sig[f'gsc/{block}'], expected, rtol=1e-6)


@pytest.mark.slow
def test_known_physics_at_init_on_digits():
    # Yang et al. 2019: BN plain nets' gradients explode towards the input; ResNets' stay flat.
    ratio = {}
    for residual in (False, True):
        # Depth 44 on 64 digits: plain 149x, residual 2.0x (depth 56 on 256: 573x and 1.9x).
        model, variables, batch = _setup(depth=44, residual=residual, width=1.0, n=64)
        sig, *_ = _signals(model, variables, batch)
        ratio[residual] = signals.first_last_ratio(sig)
    assert ratio[False] > 20, ratio
    assert ratio[True] < 10, ratio
    # Without BN a deep plain net's forward signal and gradients vanish on these 8x8 images
    # (zero padding at 2x2 resolution removes most of each 3x3 window's input).
    model, variables, batch = _setup(depth=20, residual=False, norm='none', width=1.0, n=64)
    sig, *_ = _signals(model, variables, batch)
    _, stds = signals.profile(sig, 'act_std')
    assert stds[-1] < 0.1 * stds[0]
    assert signals.first_last_ratio(sig) < 0.5


def test_probes_do_not_change_training(digits_config, tmp_path):
    digits_config.train.steps = 4
    digits_config.probes.every_steps = 0
    off = train.train_and_evaluate(digits_config, str(tmp_path / 'off'))
    digits_config.probes.every_steps = 1  # probe variant on every step
    on = train.train_and_evaluate(digits_config, str(tmp_path / 'on'))
    for a, b in zip(jax.tree.leaves(off.params), jax.tree.leaves(on.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(off.batch_stats), jax.tree.leaves(on.batch_stats), strict=True):
        np.testing.assert_array_equal(a, b)  # BN statistics updated once per step, as without


def _fake_run(workdir, residual, norm, scale):
    """A workdir with a config and probe rows at steps 0, 10, 20, 30: grad_norm of layer i at
    step s is scale * (i + 1) * (s + 1), so every plotted number is known."""
    os.makedirs(workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump({'model': {'family': 'cifar', 'residual': residual, 'depth': 8, 'norm': norm}}, f)
    layers = ['000_stem/conv', '001_stage1_block1/conv1', 'head/dense']
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'step': 5, 'train/loss': 1.0}) + '\n')  # Not a probe row.
        for s in (0, 10, 20, 30):
            row = {'step': s, 'grad_norm/global': 1.0}
            for name in ('grad_norm', 'act_grad_norm', 'act_std', 'gsc'):
                row.update({f'{name}/{k}': scale * (i + 1) * (s + 1) for i, k in enumerate(layers)})
            f.write(json.dumps(row) + '\n')
    return layers


def test_plot_signals_draws_each_run_and_writes_its_numbers(tmp_path):
    layers = _fake_run(tmp_path / 'a', True, 'batch', 1.0)
    _fake_run(tmp_path / 'b', False, 'none', 2.0)
    out = tmp_path / 'figs'
    paths = plots.plot_signals([str(tmp_path / 'a'), str(tmp_path / 'b')], str(out))
    names = ['grad_norm', 'act_grad_norm', 'act_std', 'gsc']
    heatmaps = ['grad_norm_heatmap_ResNet-8', 'grad_norm_heatmap_plain-8_no_BN']
    assert [os.path.basename(p) for p in paths] == [
        *(n + '_profile.png' for n in names),
        *(h + '.png' for h in heatmaps),
    ]
    for p in paths:
        assert os.path.getsize(p) > 1000 and os.path.exists(p[: -len('.png')] + '.json')
    with open(out / 'act_std_profile.json') as f:
        profile = json.load(f)
    # Default steps: first, middle and last probe rows; labels from each run's config.
    assert sorted(profile) == [
        f'{r}@{s}' for r in ('ResNet-8', 'plain-8 (no BN)') for s in (0, 20, 30)
    ]
    assert profile['plain-8 (no BN)@20'] == {k: 2.0 * (i + 1) * 21 for i, k in enumerate(layers)}
    with open(out / 'grad_norm_heatmap_ResNet-8.json') as f:
        heat = json.load(f)
    assert heat['steps'] == [0, 10, 20, 30] and heat['layers'] == layers
    np.testing.assert_allclose(heat['values'], np.outer([1, 2, 3], [1, 11, 21, 31]))
    # Chosen steps, -1 = the last.
    plots.plot_signals([str(tmp_path / 'a')], str(out), steps=[10, -1])
    with open(out / 'gsc_profile.json') as f:
        assert sorted(json.load(f)) == ['ResNet-8@10', 'ResNet-8@30']
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 2.0}\n')
    with pytest.raises(ValueError, match='no probe rows'):
        plots.plot_signals([str(tmp_path / 'c')], str(out))


class _AnyNet(flax.linen.Module):
    """Not a resjax model: names sort against the forward order, LayerNorm and dropout."""

    @flax.linen.compact
    def __call__(self, x, train):
        x = flax.linen.Dense(6, name='z_in')(x)
        x = flax.linen.LayerNorm(name='m_norm')(x)
        x = flax.linen.Dropout(0.5, deterministic=not train)(flax.linen.relu(x))
        return flax.linen.Dense(3, name='a_out')(x)


def test_any_model_signals_match_plain_jax_gradients():
    net, key = _AnyNet(), jax.random.PRNGKey(0)
    x, y = jax.random.normal(key, (8, 5)), jnp.arange(8) % 3
    variables = net.init(key, x, train=False)
    loss = lambda out: jnp.mean(objective.cross_entropy(out, y))
    assert signals.layer_order(net, variables, (x,), train=False) == ['z_in', 'm_norm', 'a_out']
    m = signals.measure(net, variables, (x,), loss, taps=['m_norm'], train=False)

    # Independent: jax.grad of the plain apply, and of the head as a function of the tapped h.
    grads = jax.grad(lambda p: loss(net.apply({'params': p}, x, train=False)))(variables['params'])
    for layer in ('z_in', 'm_norm', 'a_out'):
        expected = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads[layer])))
        np.testing.assert_allclose(m[f'grad_norm/{layer}'], expected, rtol=1e-5)
    _, state = net.apply(variables, x, train=False, capture_intermediates=True)
    h = state['intermediates']['m_norm']['__call__'][0]
    head = lambda h: loss(flax.linen.Dense(3).apply({'params': variables['params']['a_out']}, h))
    dh = jax.grad(lambda h: head(flax.linen.relu(h)))(h)
    np.testing.assert_allclose(m['act_grad_norm/m_norm'], np.linalg.norm(dh), rtol=1e-5)
    np.testing.assert_allclose(m['act_std/m_norm'], np.std(h), rtol=1e-5)
    logits = net.apply(variables, x, train=False)
    dz = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 3)) / len(y)
    np.testing.assert_allclose(m['act_grad_norm/output'], np.linalg.norm(dz), rtol=1e-5)
    gsc = np.linalg.norm(dh) * np.linalg.norm(h) / (np.linalg.norm(dz) * np.linalg.norm(logits))
    np.testing.assert_allclose(m['gsc/m_norm'], gsc, rtol=1e-5)
    assert m['gsc/output'] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tap 'm_nrom'"):
        signals.measure(net, variables, (x,), loss, taps=['m_nrom'], train=False)

    # Dropout: the rng given is the one used (same key, same numbers; another, others).
    at = lambda k: signals.measure(net, variables, (x,), loss, rngs={'dropout': k}, train=True)
    a, b, c = at(jax.random.PRNGKey(1)), at(jax.random.PRNGKey(1)), at(jax.random.PRNGKey(2))
    assert a['grad_norm/z_in'] == b['grad_norm/z_in'] != c['grad_norm/z_in']
    names, _ = signals.profile(
        m, 'grad_norm', order=signals.layer_order(net, variables, (x,), train=False)
    )
    assert names == ['z_in', 'm_norm', 'a_out']
