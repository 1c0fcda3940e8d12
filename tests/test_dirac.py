"""Plain nets that get the identity another way (model.dirac: DiracNets' parametrisation, or a
Dirac init) and residual nets with a scaled shortcut (model.shortcut_scale), each against a
hand count or a hand computation; the defaults change nothing."""

import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resjax import config_lib, construct, models, optim, train, workdir
from resjax.models import layout
from resjax.models.resnet import ResNet
from resjax.probes import blocks

EPS = 1e-5  # BatchNorm's


def _config(**overrides):
    c = config_lib.default_config().model
    c.update({'depth': 8, 'width': 0.25, **overrides})  # widths 4/8/16
    return c


def _flat(tree):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _unflat(flat):
    return flax.traverse_util.unflatten_dict(flat, sep='/')


def _init(config, x, seed=0):
    """The model and its {'params', 'batch_stats'} (not the probes' 'perturbations')."""
    model = models.create_model(config, 10)
    variables = model.init(jax.random.PRNGKey(seed), x, train=False)
    return model, {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}


def _inter(model, variables, x):
    return model.apply(variables, x, train=False, mutable=['intermediates'])[1]['intermediates']


X = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))


def test_parameter_counts_against_a_hand_count():
    # CIFAR depth 8 at width 0.25: stem 3->4, blocks 4->4, 4->8 (/2), 8->16 (/2), head 16->10.
    conv = lambda cin, cout: 9 * cin * cout
    bn = lambda c: 2 * c
    plain = (
        conv(3, 4) + bn(4)
        + 2 * (conv(4, 4) + bn(4))
        + conv(4, 8) + conv(8, 8) + 2 * bn(8)
        + conv(8, 16) + conv(16, 16) + 2 * bn(16)
        + 16 * 10 + 10
    )  # fmt: skip
    # Dirac convs: the shape-keeping ones (both of block 1, the second of blocks 2 and 3),
    # each with a and b per output channel.
    dirac = 2 * (4 + 4 + 8 + 16)
    want = [
        (_config(residual=False), plain),
        (_config(residual=False, dirac='init'), plain),
        (_config(residual=False, dirac='param'), plain + dirac),
        (_config(shortcut_scale=0.5), plain),
    ]
    trees, listed = {}, {}
    for config, count in want:
        model = models.create_model(config, 10)
        init = functools.partial(model.init, jax.random.PRNGKey(0), X, train=False)
        flat = _flat(jax.eval_shape(init)['params'])
        assert sum(v.size for v in flat.values()) == count, config.dirac
        key = (config.dirac, config.residual)
        trees[key] = {k: v.shape for k, v in flat.items()}
        # The layout names exactly the convs that hold a and b.
        owners = {k.rsplit('/', 1)[0] for k in flat if k.endswith('/dirac_a')}
        listed[key] = {c for b in models.model_layout(config).blocks for c in b.dirac_layers}
        assert owners == listed[key]
    assert trees['init', False] == trees['none', False]  # an init, not a parametrisation
    assert sorted(listed['param', False]) == [
        '001_stage1_block1/conv1',
        '001_stage1_block1/conv2',
        '002_stage2_block1/conv2',
        '003_stage3_block1/conv2',
    ]
    # Bottlenecks: only the 3x3 conv keeps the shape, and not where it is strided.
    config = _config(residual=False, dirac='param', family='imagenet', depth=50, width=0.0625)
    lay = models.model_layout(config)
    assert {c for b in lay.blocks for c in b.dirac_layers} == {
        f'{b.name}/conv2' for b in lay.blocks if b.stride == 1
    } | {'001_stage1_block1/conv1'}  # ... and a 1x1 from as many channels (the stem's) as out


def test_dirac_param_with_a0_b1_is_the_plain_net():
    plain, pv = _init(_config(residual=False), X)
    dirac, dv = _init(_config(residual=False, dirac='param'), X)
    flat = _flat(dv['params'])
    for k, v in _flat(pv['params']).items():
        np.testing.assert_array_equal(flat[k], v)  # W is the plain net's kernel, seed for seed
    for k in flat:
        if k.endswith(('/dirac_a', '/dirac_b')):
            flat[k] = jnp.full_like(flat[k], 0.0 if k.endswith('_a') else 1.0)
    dv = {**dv, 'params': _unflat(flat)}
    np.testing.assert_array_equal(dirac.apply(dv, X, train=False), plain.apply(pv, X, train=False))
    got, want = (
        m.apply(v, X, train=True, mutable=['batch_stats']) for m, v in ((dirac, dv), (plain, pv))
    )
    jax.tree.map(np.testing.assert_array_equal, got, want)  # logits and BN statistics


@pytest.mark.parametrize('norm', ['batch', 'none'])
def test_dirac_init_computes_the_identity_at_init(norm):
    # Eval mode at init: each BN is y / sqrt(1 + eps) (running statistics (0, 1), scale 1,
    # offset 0), and a block's ReLUs pass its input, a ReLU output (>= 0).
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
    config = _config(residual=False, dirac='init', depth=14, norm=norm)
    model, variables = _init(config, x)
    lay = models.model_layout(config)
    h = {name: v['output'][0] for name, v in _inter(model, variables, x).items() if 'output' in v}
    gain = 1 / (1 + EPS) if norm == 'batch' else 1.0  # two BNs
    kept = [b for b in lay.blocks if b.stride == 1 and b.channels_in == b.channels_out]
    assert [b.index for b in kept] == [1, 2, 2, 2]
    for b in kept:
        before = lay.names[lay.names.index(b.name) - 1]
        np.testing.assert_allclose(h[b.name], gain * h[before], rtol=1e-6, atol=1e-7)
    assert not np.allclose(h['003_stage2_block1'][..., :4], h['002_stage1_block2'][:, ::2, ::2])
    flat = _flat(variables['params'])
    kernel = flat['002_stage1_block2/conv1/kernel']
    np.testing.assert_array_equal(kernel, models.dirac_kernel(kernel.shape))  # no noise added
    assert float(jnp.sum(flat['003_stage2_block1/conv1/kernel'] ** 2)) > 1  # strided: He init
    # The Dirac-param net is the identity at a = 1, b = 0 (the construction's), not at its
    # init (a = b = 1: the Dirac kernel plus a He-init W).
    param, pv = _init(_config(residual=False, dirac='param', depth=14, norm=norm), x)
    flat = _flat(pv['params'])
    for at_init in (True, False):
        if not at_init:
            flat = {k: jnp.zeros_like(v) if k.endswith('/dirac_b') else v for k, v in flat.items()}
        got = _inter(param, {**pv, 'params': _unflat(flat)}, x)
        for b in kept:
            before = lay.names[lay.names.index(b.name) - 1]
            out, want = got[b.name]['output'][0], gain * got[before]['output'][0]
            assert np.allclose(out, want, rtol=1e-6, atol=1e-7) != at_init, (b.name, at_init)


def test_weight_decay_leaves_a_and_b_alone():
    _, variables = _init(_config(residual=False, dirac='param'), X)
    params = variables['params']
    zeros = jax.tree.map(jnp.zeros_like, params)
    for mode in ('l2', 'decoupled'):
        c = config_lib.default_config().train
        c.weight_decay_mode = mode
        tx = optim.create_optimizer(c)
        updates, _ = tx.update(zeros, tx.init(params), params)
        for k, u in _flat(updates).items():
            if k.endswith(('/dirac_a', '/dirac_b')):
                assert not np.any(np.asarray(u)), k
            else:  # W, BN and the head decay as before: -lr * wd * w
                np.testing.assert_allclose(u, -c.lr * c.weight_decay * _flat(params)[k], rtol=1e-6)
    # A model without a and b: the updates and the state of optax's own weight decay.
    _, plain = _init(_config(), X)
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), plain['params'])
    c = config_lib.default_config().train
    ref = optax.chain(
        optax.add_decayed_weights(c.weight_decay),
        optax.trace(decay=c.momentum, nesterov=c.nesterov),
        optax.scale_by_learning_rate(optim.learning_rate_schedule(c)),
    )
    tx = optim.create_optimizer(c)
    got, want = (t.update(grads, t.init(plain['params']), plain['params']) for t in (tx, ref))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_shortcut_scale_halves_the_shortcut():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 8, 8, 3))
    net, variables = _init(_config(shortcut_scale=0.5), x)
    full = models.create_model(_config(), 10)
    inter, full_inter = (_inter(m, variables, x) for m in (net, full))
    p, s = variables['params'], variables['batch_stats']

    def conv_bn(h, block, i):
        k = p[block][f'conv{i}']['kernel']
        y = jax.lax.conv_general_dilated(
            h, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )
        bn, stats = p[block][f'norm{i}']['bn'], s[block][f'norm{i}']['bn']
        return (y - stats['mean']) / jnp.sqrt(stats['var'] + EPS) * bn['scale'] + bn['bias']

    h = inter['000_stem']['output'][0]
    branch = conv_bn(jax.nn.relu(conv_bn(h, '001_stage1_block1', 1)), '001_stage1_block1', 2)
    np.testing.assert_allclose(
        inter['001_stage1_block1']['output'][0], jax.nn.relu(branch + 0.5 * h), atol=1e-5
    )
    np.testing.assert_array_equal(inter['001_stage1_block1']['shortcut'][0], 0.5 * h)
    h = inter['001_stage1_block1']['output'][0]  # option A: subsample, zero-pad 4 -> 8
    padded = jnp.pad(h[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (0, 4)))
    np.testing.assert_array_equal(inter['002_stage2_block1']['shortcut'][0], 0.5 * padded)
    assert not np.allclose(
        inter['001_stage1_block1']['output'][0], full_inter['001_stage1_block1']['output'][0]
    )


@pytest.mark.parametrize(
    'overrides, words',
    [
        (dict(dirac='param'), "model.dirac='param' is for plain nets"),
        (dict(dirac='init'), "model.dirac='init' is for plain nets"),
        (dict(dirac='dirac', residual=False), "model.dirac='dirac' is unknown"),
        (dict(shortcut_scale=0.0), 'model.shortcut_scale=0.0 must be a positive finite'),
        (dict(shortcut_scale=-0.5), 'model.shortcut_scale=-0.5 must be a positive finite'),
        (dict(shortcut_scale=float('inf')), 'model.shortcut_scale=inf must be a positive'),
        (dict(shortcut_scale=0.5, residual=False), 'model.shortcut_scale=0.5 scales the shortcut'),
    ],
)
def test_bad_values_are_config_errors(overrides, words):
    config = config_lib.default_config()
    config.model.update(overrides)
    with pytest.raises(train.ConfigError) as e:
        train.validate_config(config)
    assert words in str(e.value) and '\n' not in str(e.value)


def test_defaults_leave_the_tree_and_the_computation_as_they_were():
    # The keys at their defaults build the module the code built before they existed.
    config = _config()
    assert (config.dirac, config.shortcut_scale) == ('none', 1.0)
    model = models.create_model(config, 10)
    before = ResNet(10, (1, 1, 1), widths=(4, 8, 16))  # no dirac, no shortcut_scale
    traced = [
        jax.make_jaxpr(m.init, static_argnums=2)(jax.random.PRNGKey(0), X, False)
        for m in (model, before)
    ]
    assert str(traced[0]) == str(traced[1])
    v = model.init(jax.random.PRNGKey(0), X, train=False)
    assert not any(k.rsplit('/', 1)[1] in models.DIRAC_PARAMS for k in _flat(v['params']))
    grad = lambda m: jax.make_jaxpr(
        jax.grad(
            lambda p: jnp.sum(
                m.apply({**v, 'params': p}, X, train=True, mutable=['batch_stats'])[0]
            )
        )
    )(v['params'])
    assert str(grad(model)) == str(grad(before))
    assert models.run_label(json.loads(config.to_json())) == 'ResNet-8'
    assert (
        models.run_label({'family': 'cifar', 'residual': True, 'depth': 56, 'norm': 'batch'})
        == 'ResNet-56'
    )
    assert (
        models.run_label(json.loads(_config(residual=False, dirac='param').to_json()))
        == 'plain-8 (Dirac param)'
    )
    assert (
        models.run_label(json.loads(_config(shortcut_scale=0.5, norm='none').to_json()))
        == 'ResNet-8 (no BN, shortcut x0.5)'
    )


def test_a_dirac_param_net_is_constructed_probed_and_not_lesioned():
    shallow, deep = (_config(residual=False, dirac='param', depth=d) for d in (8, 14))
    x = jax.random.normal(jax.random.PRNGKey(4), (16, 8, 8, 3))
    snet, sv = _init(shallow, x, seed=5)
    dnet, dv = _init(deep, x, seed=6)
    # Trained-looking source: a, b, BN and its statistics away from their init.
    # (numpy, not jax.random: one compile per leaf shape would cost seconds)
    sv = jax.tree.map(lambda v: v + 0.3 * (1 + np.cos(np.arange(v.size))).reshape(v.shape), sv)
    lays = [models.model_layout(c) for c in (shallow, deep)]
    built = construct.extend(snet, sv, dv, np.asarray(x), *lays)
    test = jax.random.normal(jax.random.PRNGKey(8), (16, 8, 8, 3))
    np.testing.assert_allclose(
        dnet.apply(built, test, train=False),
        snet.apply(sv, test, train=False),
        rtol=1e-5,
        atol=1e-5,
    )
    added = _flat(built['params'])
    for b in layout.added_blocks(lays[1], lays[0]):
        for conv in b.layers:
            assert conv in b.dirac_layers
            assert np.all(np.asarray(added[f'{conv}/dirac_a']) == 1)
            assert not np.any(np.asarray(added[f'{conv}/dirac_b']))
            np.testing.assert_array_equal(
                added[f'{conv}/kernel'], _flat(dv['params'])[f'{conv}/kernel']
            )
    signals = blocks.block_signals(_inter(dnet, built, test), lays[1])
    assert len([k for k in signals if k.startswith('block_change/')]) == 6
    assert all(
        float(signals[f'block_change/{b.name}']) < 1e-5
        for b in layout.added_blocks(lays[1], lays[0])
    )
    with pytest.raises(ValueError, match='plain block'):
        layout.lesion(lays[1], built['params'], '002_stage1_block2')
    # A source of another parametrisation, or a scaled shortcut with added blocks: refused.
    with pytest.raises(ValueError, match='model.dirac'):
        construct.check_compatible(_config(residual=False, depth=8), deep)
    scaled = [_config(shortcut_scale=0.5, depth=d) for d in (8, 14)]
    construct.check_compatible(scaled[0], scaled[0])  # a warm restart is fine
    with pytest.raises(ValueError, match='shortcut_scale=0.5 .* not an identity'):
        construct.check_compatible(*scaled)


def test_a_workdir_from_before_the_keys_resumes_and_a_changed_one_is_refused(tmp_path):
    config = config_lib.default_config()
    workdir.write_config(config, str(tmp_path))
    path = tmp_path / 'config.json'
    saved = json.loads(path.read_text())
    del saved['model']['dirac'], saved['model']['shortcut_scale']
    path.write_text(json.dumps(saved))
    workdir.check(config, str(tmp_path), train.RESUME_CRITICAL)  # read as the defaults
    config.model.shortcut_scale = 0.5
    with pytest.raises(workdir.WorkdirError, match='model.shortcut_scale=1.0, this config has 0.5'):
        workdir.check(config, str(tmp_path), train.RESUME_CRITICAL)
