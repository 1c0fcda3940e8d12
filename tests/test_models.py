import functools

import flax
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import config_lib, models, objective, steps, xla
from resjax.probes import hessian, signals


def _model_config(**overrides):
    c = config_lib.default_config().model
    c.update(overrides)
    return c


def _num_params(model_config, shape=(32, 32, 3), classes=10):
    model = models.create_model(model_config, classes)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False)
    )
    return sum(x.size for x in jax.tree.leaves(variables['params'])), variables


@pytest.mark.parametrize('depth,expected_m', [(20, 0.27), (56, 0.85), (110, 1.7)])
def test_cifar_parameter_counts_match_paper(depth, expected_m):
    # He et al. 2015, Table 6 (option A shortcuts: no extra parameters).
    n, _ = _num_params(_model_config(depth=depth))
    assert round(n / 1e6, 2 if depth < 100 else 1) == expected_m


def test_resnet50_parameter_count_matches_paper():
    n, _ = _num_params(
        _model_config(family='imagenet', depth=50, shortcut='projection'), (224, 224, 3), 1000
    )
    assert round(n / 1e6, 1) == 25.6


def test_plain_and_residual_differ_only_in_the_shortcut():
    _, res = _num_params(_model_config(depth=20, residual=True))
    _, plain = _num_params(_model_config(depth=20, residual=False))
    assert jax.tree.map(jnp.shape, res) == jax.tree.map(jnp.shape, plain)
    # With projection shortcuts the residual net has exactly the extra 1x1 convs and norms.
    _, proj = _num_params(_model_config(depth=20, shortcut='projection'))
    extra = set(flax.traverse_util.flatten_dict(proj['params'], sep='/')) - set(
        flax.traverse_util.flatten_dict(plain['params'], sep='/')
    )
    assert extra and all('shortcut_' in k for k in extra)
    assert {k.split('/')[0] for k in extra} == {'004_stage2_block1', '007_stage3_block1'}


def test_same_parameters_give_different_functions_with_and_without_shortcuts():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    res = models.create_model(_model_config(depth=8, norm='none'), 10)
    plain = models.create_model(_model_config(depth=8, norm='none', residual=False), 10)
    variables = xla.run_once(functools.partial(res.init, train=False), jax.random.PRNGKey(0), x)
    # Zero the second conv of every block: a residual block becomes relu(x) = x (x >= 0), so
    # the residual net is stem -> head, and the plain net outputs a constant.
    params = flax.traverse_util.flatten_dict(variables['params'], sep='/')
    params = {k: jnp.zeros_like(v) if '/conv2/' in k else v for k, v in params.items()}
    params = flax.traverse_util.unflatten_dict(params, sep='/')
    out_res = jax.jit(functools.partial(res.apply, train=False))({'params': params}, x)
    out_plain = jax.jit(functools.partial(plain.apply, train=False))({'params': params}, x)
    assert jnp.allclose(out_plain, out_plain[0], atol=1e-6)  # input-independent
    assert not jnp.allclose(out_res, out_res[0], atol=1e-3)


def test_layer_names_sort_in_forward_order():
    _, v = _num_params(_model_config(depth=56))
    names = signals.weight_layers(v['params'])
    assert names[0] == '000_stem/conv'
    assert names[1] == '001_stage1_block1/conv1'
    assert names[-1] == 'head/dense'
    assert len(names) == 56  # 55 convs + the classifier
    blocks = [n.split('/')[0] for n in names[:-1]]
    assert blocks == sorted(blocks)


@pytest.mark.parametrize(
    'overrides,shape',
    [
        (dict(depth=8), (8, 8, 1)),
        (dict(depth=8, preactivation=True, shortcut='projection'), (8, 8, 1)),
        (dict(depth=8, shortcut='all_projection', norm='none'), (12, 12, 3)),
        (dict(family='imagenet', depth=18, width=0.125, shortcut='projection'), (8, 8, 3)),
        (dict(family='imagenet', depth=50, width=0.125, shortcut='projection'), (16, 16, 3)),
    ],
)
def test_forward_shapes_and_batchnorm_state(overrides, shape):
    model = models.create_model(_model_config(**overrides), 7)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *shape))
    variables = xla.run_once(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    logits, new_state = model.apply(
        {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})},
        x,
        train=True,
        mutable=['batch_stats'],
    )
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert ('batch_stats' in variables) == (overrides.get('norm', 'batch') == 'batch')


def test_bfloat16_compute_keeps_float32_params():
    model = models.create_model(_model_config(depth=8, dtype='bfloat16'), 10)
    x = jnp.ones((2, 8, 8, 1))
    variables = xla.run_once(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
    assert jax.jit(functools.partial(model.apply, train=False))(variables, x).dtype == jnp.float32


@pytest.mark.parametrize(
    'overrides,match',
    [
        (dict(depth=21), '6n\\+2'),
        (dict(family='imagenet', depth=20), 'ImageNet-family depth'),
        (dict(shortcut='B'), 'model.shortcut'),
        (dict(family='vgg'), 'model.family'),
        pytest.param(
            dict(scan_blocks=True, weight_grad='xla'),
            'naive loops',
            marks=pytest.mark.skipif(jax.default_backend() != 'cpu', reason='CPU only'),
        ),
    ],
)
def test_bad_model_configs_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        models.create_model(_model_config(**overrides), 10)


def _primitives(jaxpr) -> set[str]:
    names = set()
    for e in jaxpr.eqns:
        names.add(e.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize(
    'overrides,shape',
    [
        (dict(depth=20, width=0.25), (8, 8, 3)),
        (dict(depth=20, width=0.25, preactivation=True, norm='none'), (8, 8, 3)),
        (dict(family='imagenet', depth=50, width=0.0625, shortcut='projection'), (16, 16, 3)),
    ],
)
def test_scanned_blocks_compute_what_the_unrolled_loop_does(x64, overrides, shape):
    # float64 compute: BN over a few values (ImageNet's last stage is 1x1 here) amplifies
    # float32 rounding differences between the two programs.
    config = _model_config(**overrides, dtype='float64')
    nets = {}
    for scan in (False, True):
        config.scan_blocks = scan
        nets[scan] = models.create_model(config, 10)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, *shape), jnp.float64)
    labels = jnp.arange(4)
    init = xla.run_once(functools.partial(nets[False].init, train=False), jax.random.PRNGKey(1), x)
    variables = {k: v for k, v in init.items() if k in ('params', 'batch_stats')}
    assert jax.tree.structure(variables['params']) == jax.tree.structure(
        jax.eval_shape(functools.partial(nets[True].init, train=False), jax.random.PRNGKey(1), x)[
            'params'
        ]
    )

    def loss(model, params):
        logits, new = model.apply(
            {**variables, 'params': params}, x, train=True, mutable=['batch_stats']
        )
        return jnp.mean(objective.cross_entropy(logits, labels)), new

    def run(model):
        (value, new), grads = jax.value_and_grad(functools.partial(loss, model), has_aux=True)(
            variables['params']
        )
        return value, grads, new, model.apply(variables, x, train=False)

    assert 'scan' in _primitives(jax.make_jaxpr(run, static_argnums=0)(nets[True]).jaxpr)
    run = jax.jit(run, static_argnums=0)
    got, want = run(nets[True]), run(nets[False])
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_probes_and_hvps_run_scanned_blocks_unrolled():
    model = models.create_model(_model_config(depth=20, width=0.25, scan_blocks=True), 10)
    x = jnp.ones((2, 8, 8, 3))
    variables = xla.run_once(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    batch = {'image': x, 'label': jnp.zeros(2, jnp.int32)}
    probe_step = functools.partial(steps.loss_and_grads, model, probes=True)
    jaxpr = jax.make_jaxpr(probe_step)(variables['params'], variables['batch_stats'], batch)
    assert 'scan' not in _primitives(jaxpr.jaxpr)  # Per-block probes need per-block values.
    hvp_loss = hessian.mean_loss_fn(model, variables['batch_stats'], batch)
    hvp_jaxpr = jax.make_jaxpr(hvp_loss)(variables['params']).jaxpr
    assert ('scan' in _primitives(hvp_jaxpr)) == (jax.default_backend() != 'cpu')


class _MLP(nn.Module):
    """A toy model family for the registry test: flatten, one hidden layer."""

    num_classes: int
    hidden: int

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.relu(nn.Dense(self.hidden, name='000_hidden')(x.reshape(len(x), -1)))
        return nn.Dense(self.num_classes, name='head')(x)


def _validate_mlp(model):
    if model.depth != 2:
        raise ValueError(f'model.depth={model.depth}: the MLP family has depth 2')


def test_a_registered_family_trains_with_no_other_change(monkeypatch, digits_config, tmp_path):
    from resjax import plots, train
    from resjax.metrics import read_metrics

    family = models.ModelFamily(
        name='mlp',
        validate=_validate_mlp,
        build=lambda m, n, axis_name, **kw: _MLP(n, round(32 * m.width), **kw),
        architecture_keys=('depth', 'width'),
        label=lambda m: f'MLP-{m["width"]}',
    )
    monkeypatch.setitem(models.FAMILIES, 'mlp', family)
    c = digits_config
    c.model.family, c.model.depth = 'mlp', 3
    with pytest.raises(ValueError, match='the MLP family has depth 2'):
        train.train_and_evaluate(c, str(tmp_path))
    c.model.depth = 2
    state = train.train_and_evaluate(c, str(tmp_path))
    assert jax.tree.map(jnp.shape, state.params) == {
        '000_hidden': {'kernel': (64, 16), 'bias': (16,)},
        'head': {'kernel': (16, 10), 'bias': (10,)},
    }
    assert [r['step'] for r in read_metrics(str(tmp_path)) if 'eval/accuracy' in r] == [3, 6]
    assert plots.run_label(str(tmp_path)) == 'MLP-0.5'
    # Built-in families stay as they were.
    assert models.run_label(
        {'family': 'cifar', 'residual': False, 'depth': 56, 'norm': 'none'}
    ) == ('plain-56 (no BN)')
