"""Block layouts (resjax.models.layout): the ResNet family's against its parameters and sown
activations, and a second family, registered here, lesioned and block-probed through its own
layout with names that follow no pattern."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resjax import config_lib, models, plots
from resjax.models import layout
from resjax.probes import blocks


def _model_config(**overrides):
    c = config_lib.default_config().model
    c.update(overrides)
    return c


def _shapes(model_config, size):
    """(params shapes, {module: sown output shape}) of the model, traced abstractly."""
    model = models.create_model(model_config, 10)
    x = jnp.zeros((1, size, size, 3))

    def f():
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        _, inter = model.apply(variables, x, train=False, mutable=['intermediates'])
        return variables['params'], inter['intermediates']

    params, inter = jax.eval_shape(f)
    outputs = {k: v['output'][0].shape for k, v in inter.items() if 'output' in v}
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    return {k: v.shape for k, v in flat.items()}, outputs


A, PAD, PROJ = 'identity', 'identity_pad', 'projection'


@pytest.mark.parametrize(
    'overrides,size,kinds',
    [
        ({'depth': 14}, 16, [A, A, PAD, A, PAD, A]),
        ({'depth': 14, 'residual': False}, 16, [None] * 6),
        ({'depth': 14, 'shortcut': 'projection'}, 16, [A, A, PROJ, A, PROJ, A]),
        ({'depth': 8, 'shortcut': 'all_projection'}, 16, [PROJ] * 3),
        ({'depth': 14, 'preactivation': True}, 16, [A, A, PAD, A, PAD, A]),
        ({'depth': 8, 'norm': 'none', 'width': 0.5}, 16, [A, PAD, PAD]),
        (
            {'family': 'imagenet', 'depth': 50, 'shortcut': 'projection', 'width': 0.25},
            64,
            [PROJ, A, A, PROJ, A, A, A, PROJ, A, A, A, A, A, PROJ, A, A],
        ),
    ],
    ids=['A', 'plain', 'B', 'C', 'preact', 'nobn', 'resnet50'],
)
def test_resnet_layout_matches_its_parameters_and_activations(overrides, size, kinds):
    config = _model_config(**overrides)
    lay = models.model_layout(config)
    params, outputs = _shapes(config, size)
    assert [b.shortcut for b in lay.blocks] == kinds
    assert {k.split('/')[0] for k in params} == {*lay.names, lay.head}
    assert list(lay.names) == list(outputs)  # ... and sorting the names gives forward order
    assert list(lay.names) == sorted(lay.names)
    for before, b in zip(lay.names, lay.blocks):
        n_in, n_out = outputs[before], outputs[b.name]
        assert (n_in[1] // n_out[1], n_in[-1], n_out[-1]) == (
            b.stride,
            b.channels_in,
            b.channels_out,
        )
        assert params[f'{b.layers[0]}/kernel'][-2] == b.channels_in
        assert params[f'{b.layers[-1]}/kernel'][-1] == b.channels_out
        assert (f'{b.name}/shortcut_conv/kernel' in params) == (b.shortcut == PROJ)
        assert b.residual == config.residual
        if b.shortcut == A:
            assert b.stride == 1 and b.channels_in == b.channels_out
        for path in (*b.layers, *b.norms, *([b.branch_end] if b.residual else [])):
            assert any(k.startswith(path + '/') for k in params), path
        if b.residual:
            bn_last = config.norm == 'batch' and not config.preactivation
            assert b.branch_end == (b.norms[-1] if bn_last else b.layers[-1])
    stages = lay.stages()
    assert [len(s) for s in stages.values()] == list(
        models.resnet.IMAGENET_STAGES[50][1]
        if config.family == 'imagenet'
        else [len(kinds) // 3] * 3
    )
    assert all([b.index for b in s] == list(range(1, len(s) + 1)) for s in stages.values())


def test_names_parse_back_and_added_blocks_are_those_past_the_source():
    shallow = models.model_layout(_model_config(depth=8))
    deep = models.model_layout(_model_config(depth=20))
    added = layout.added_blocks(deep, shallow)
    assert [b.name for b in added] == [
        '002_stage1_block2',
        '003_stage1_block3',
        '005_stage2_block2',
        '006_stage2_block3',
        '008_stage3_block2',
        '009_stage3_block3',
    ]
    assert layout.added_blocks(deep, deep) == []
    for position, b in enumerate(deep.blocks, 1):
        assert layout.parse_name(f'{b.name}/conv1') == (position, b.stage, b.index)
    assert layout.parse_name('000_stem/conv') == (0, 0, 0)
    assert layout.parse_name('head/dense') is None and layout.parse_name('Dense_0') is None
    assert [plots.stage_of(n) for n in ('000_stem', '004_stage2_block1/conv2', 'head')] == [
        'stem',
        'stage 2',
        'head',
    ]
    assert plots.block_index('004_stage2_block1', 0) == 4 and plots.block_index('x', 2) == 3


# ---------------------------------------------------------------------------------------------
# A second family: a small conv net whose names follow no pattern and do not sort in forward
# order, with its own layout.

TOY_BLOCKS = (('entry', 1, 1, 4), ('middle', 1, 2, 4), ('down', 2, 1, 8), ('exit', 2, 2, 8))


class ToyBlock(nn.Module):
    features: int
    strides: int
    residual: bool

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(self.features, (3, 3), self.strides, name='inner')(x))
        y = nn.Conv(self.features, (3, 3), name='outer')(y)
        if self.residual:
            s = x
            if self.strides != 1 or x.shape[-1] != self.features:
                s = nn.Conv(self.features, (1, 1), self.strides, name='skip')(x)
            self.sow('intermediates', 'branch', y)
            self.sow('intermediates', 'shortcut', s)
            y = y + s
        y = nn.relu(y)
        self.sow('intermediates', 'output', y)
        return y


class ToyStem(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name='conv')(x))
        self.sow('intermediates', 'output', x)
        return x


class Toy(nn.Module):
    residual: bool
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
        x = ToyStem(name='input')(x)
        for name, _, _, features in TOY_BLOCKS:
            x = ToyBlock(features, 2 if name == 'down' else 1, self.residual, name=name)(x)
        return nn.Dense(self.num_classes, name='classifier')(jnp.mean(x, axis=(1, 2)))


def _toy_layout(model):
    specs, channels = [], 4
    for name, stage, index, features in TOY_BLOCKS:
        stride = 2 if name == 'down' else 1
        shortcut = None
        if model.residual:
            shortcut = 'projection' if stride != 1 or channels != features else 'identity'
        specs.append(
            layout.BlockSpec(
                name=name,
                stage=stage,
                index=index,
                stride=stride,
                channels_in=channels,
                channels_out=features,
                residual=model.residual,
                shortcut=shortcut,
                layers=(f'{name}/inner', f'{name}/outer'),
                branch_end=f'{name}/outer' if model.residual else None,
            )
        )
        channels = features
    return layout.Layout(tuple(specs), stem='input', head='classifier')


@pytest.fixture
def toy_family():
    family = models.register(
        models.ModelFamily(
            name='toy',
            validate=lambda model: None,
            build=lambda model, num_classes, axis_name, **kw: Toy(model.residual, num_classes),
            architecture_keys=('residual',),
            label=lambda model: 'toy',
            layout=_toy_layout,
        )
    )
    yield family
    del models.FAMILIES['toy']


def _toy(residual):
    config = ml_collections.ConfigDict({'family': 'toy', 'residual': residual, 'dtype': 'float32'})
    model = models.create_model(config, 10)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(1), x)['params']
    return model, models.model_layout(config), params, x


def _inter(model, params, x):
    return model.apply({'params': params}, x, mutable=['intermediates'])[1]['intermediates']


def _np(x):
    return np.asarray(x, np.float64)


def test_a_registered_family_is_lesioned_through_its_layout(toy_family):
    model, lay, params, x = _toy(residual=True)
    assert [b.name for b in lay.residual_blocks()] == ['entry', 'middle', 'down', 'exit']
    # An identity-shortcut block without its branch passes its input (a ReLU output) through.
    inter = _inter(model, layout.lesion(lay, params, 'middle'), x)
    np.testing.assert_array_equal(inter['middle']['output'][0], inter['entry']['output'][0])
    # A projection block keeps its shortcut: relu(skip(x)), the branch exactly zero.
    lesioned = layout.lesion(lay, params, 'down')
    inter = _inter(model, lesioned, x)
    assert not np.any(np.asarray(inter['down']['branch'][0]))
    skip = nn.Conv(8, (1, 1), 2).apply(
        {'params': params['down']['skip']}, inter['middle']['output'][0]
    )
    np.testing.assert_allclose(inter['down']['output'][0], jax.nn.relu(skip), rtol=1e-6, atol=1e-6)
    before, after = (flax.traverse_util.flatten_dict(t, sep='/') for t in (params, lesioned))
    for k, v in after.items():
        if k.startswith('down/outer/'):
            assert not np.any(np.asarray(v)), k  # kernel and bias
        else:
            np.testing.assert_array_equal(v, before[k])

    _, plain, plain_params, _ = _toy(residual=False)
    assert plain.residual_blocks() == ()
    with pytest.raises(ValueError, match='plain block'):
        layout.lesion(plain, plain_params, 'middle')


def test_a_registered_family_is_block_probed_through_its_layout(toy_family):
    model, lay, params, x = _toy(residual=True)
    inter = _inter(model, params, x)
    out = blocks.block_signals(inter, lay)
    order = ['entry', 'middle', 'down', 'exit']
    assert [k for k in out if k.startswith('block_change/')] == [f'block_change/{n}' for n in order]
    assert [n for n, _ in blocks.block_outputs(inter)] != ['input', *order]  # names don't sort
    h = {n: _np(inter[n]['output'][0]) for n in ['input', *order]}
    want = np.linalg.norm(h['middle'] - h['entry']) / np.linalg.norm(h['entry'])
    assert float(out['block_change/middle']) == pytest.approx(want, rel=1e-5)
    start = np.zeros_like(h['down'])
    start[..., :4] = h['middle'][:, ::2, ::2, :]  # option A from 4 to 8 channels, stride 2
    want = np.linalg.norm(h['down'] - start) / np.linalg.norm(start)
    assert float(out['block_change/down']) == pytest.approx(want, rel=1e-5)
    for n in order:
        want = np.linalg.norm(_np(inter[n]['branch'][0])) / np.linalg.norm(
            _np(inter[n]['shortcut'][0])
        )
        assert float(out[f'branch_ratio/{n}']) == pytest.approx(want, rel=1e-5)
    names, matrix = blocks.cka_matrix(inter, lay)
    assert names == ['input', *order] and matrix.shape == (5, 5)

    plain_model, plain, plain_params, _ = _toy(residual=False)
    plain_out = blocks.block_signals(_inter(plain_model, plain_params, x), plain)
    assert not any(k.startswith('branch_ratio/') for k in plain_out)
    assert len([k for k in plain_out if k.startswith('block_change/')]) == 4
