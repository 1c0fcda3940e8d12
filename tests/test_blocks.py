"""Block probes (resjax.probes.blocks) and the constructed identity (resjax.construct), each
against an independent computation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import config_lib, construct
from resjax.models.resnet import BasicBlock, ResNet
from resjax.probes import blocks


def _net(depth, residual, norm='batch'):
    n = (depth - 2) // 6
    return ResNet(10, (n, n, n), widths=(4, 8, 16), residual=residual, norm=norm)


def _randomise(variables, key):
    """Trained-looking variables: BN scales, offsets and running statistics away from their
    init, so that identities cannot pass by accident."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    keys = jax.random.split(key, len(flat))
    out = {}
    for k, (path, v) in zip(keys, flat.items()):
        if path[-1] in ('scale', 'var'):
            v = jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5)
        elif path[-1] in ('bias', 'mean'):
            v = 0.3 * jax.random.normal(k, v.shape)
        out[path] = v
    return flax.traverse_util.unflatten_dict(out)


def _intermediates(model, variables, x, train=False):
    mutable = ['intermediates'] + (['batch_stats'] if train else [])
    return model.apply(variables, x, train=train, mutable=mutable)[1]['intermediates']


def _np_cka(x, y):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_linear_cka_matches_the_feature_space_formula_and_its_invariances():
    kx, ky, kq = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (32, 20))
    y = x[:, :12] @ jax.random.normal(ky, (12, 30)) + 0.5 * jax.random.normal(kq, (32, 30))
    assert float(blocks.linear_cka(x, y)) == pytest.approx(_np_cka(x, y), rel=1e-5)
    q, _ = jnp.linalg.qr(jax.random.normal(kq, (20, 20)))
    assert float(blocks.linear_cka(x, 3.0 * x @ q + 1.0)) == pytest.approx(1.0, abs=1e-5)
    assert float(blocks.linear_cka(x, y)) < 0.99


def test_block_signals_match_an_independent_forward():
    model = _net(8, residual=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 3))
    variables = _randomise(model.init(jax.random.PRNGKey(2), x, train=False), jax.random.PRNGKey(3))
    inter = _intermediates(model, variables, x)
    out = blocks.block_signals(inter)
    h = {name: np.asarray(v, np.float64) for name, v in blocks.block_outputs(inter)}
    assert list(h) == ['000_stem', '001_stage1_block1', '002_stage2_block1', '003_stage3_block1']

    # Branch ratio of block 1 (identity shortcut): F(x) is the plain twin's last response.
    name = '001_stage1_block1'
    block_vars = {col: tree[name] for col, tree in variables.items()}
    twin = BasicBlock(4, residual=False)
    _, twin_inter = twin.apply(block_vars, h['000_stem'], False, mutable=['intermediates'])
    branch = np.asarray(twin_inter['intermediates']['response2'][0], np.float64)
    want = np.linalg.norm(branch) / np.linalg.norm(h['000_stem'])
    assert float(out[f'branch_ratio/{name}']) == pytest.approx(want, rel=1e-5)

    # Block change through a downsampling block: every other pixel, zero channels.
    before, after = h['001_stage1_block1'], h['002_stage2_block1']
    start = np.zeros_like(after)
    start[..., :4] = before[:, ::2, ::2, :]
    want = np.linalg.norm(after - start) / np.linalg.norm(start)
    assert float(out['block_change/002_stage2_block1']) == pytest.approx(want, rel=1e-5)
    want = _np_cka(before, after)
    assert float(out['cka/002_stage2_block1']) == pytest.approx(want, rel=1e-4)
    names, matrix = blocks.cka_matrix(inter)
    assert names == list(h) and matrix.shape == (4, 4)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    assert float(matrix[1, 2]) == pytest.approx(want, rel=1e-4)

    plain = _net(8, residual=False)
    plain_out = blocks.block_signals(_intermediates(plain, variables, x))
    assert not any(k.startswith('branch_ratio/') for k in plain_out)
    assert sorted(k for k in plain_out if k.startswith('cka/')) == [f'cka/{n}' for n in list(h)[1:]]


def test_init_distance_is_the_relative_distance_per_layer():
    model = _net(8, residual=True)
    x = jnp.zeros((1, 8, 8, 3))
    p0 = model.init(jax.random.PRNGKey(0), x, train=False)['params']
    p1 = model.init(jax.random.PRNGKey(1), x, train=False)['params']
    out = blocks.init_distance(p1, p0)
    conv = ('001_stage1_block1', 'conv2', 'kernel')
    a, b = (np.asarray(p[conv[0]][conv[1]][conv[2]], np.float64) for p in (p1, p0))
    want = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert float(out['init_distance/001_stage1_block1/conv2']) == pytest.approx(want, rel=1e-5)
    flat0 = np.concatenate([np.ravel(v) for v in jax.tree.leaves(p0)])
    flat1 = np.concatenate([np.ravel(v) for v in jax.tree.leaves(p1)])
    want = np.linalg.norm(flat1 - flat0) / np.linalg.norm(flat0)
    assert float(out['init_distance/global']) == pytest.approx(want, rel=1e-5)
    assert float(blocks.init_distance(p0, p0)['init_distance/global']) == 0.0


@pytest.mark.parametrize(
    'residual,norm', [(False, 'batch'), (True, 'batch'), (False, 'none'), (True, 'none')], ids=str
)
def test_constructed_deep_net_computes_the_shallow_net(residual, norm):
    shallow, deep = _net(8, residual, norm), _net(20, residual, norm)
    x = jax.random.normal(jax.random.PRNGKey(4), (16, 8, 8, 3))
    sv = _randomise(shallow.init(jax.random.PRNGKey(5), x, train=False), jax.random.PRNGKey(6))
    dv = deep.init(jax.random.PRNGKey(7), x, train=False)
    built = construct.extend(shallow, sv, dv, np.asarray(x), shallow.layout(), deep.layout())
    for col in ('params', 'batch_stats'):
        assert jax.tree.structure(built[col]) == jax.tree.structure(dv.get(col, {}))
    test = jax.random.normal(jax.random.PRNGKey(8), (16, 8, 8, 3))  # Not the calibration set.
    want = shallow.apply(sv, test, train=False)
    got = deep.apply(built, test, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The added blocks change nothing; the copied ones carry the trained weights.
    inter = _intermediates(deep, built, test)
    change = blocks.block_signals(inter)
    added = ['002_stage1_block2', '003_stage1_block3', '009_stage3_block3']
    assert all(float(change[f'block_change/{b}']) < 1e-5 for b in added)
    assert float(change['block_change/001_stage1_block1']) > 0.1
    kernel = built['params']['002_stage1_block2']['conv1']['kernel']
    assert float(kernel[1, 1, 2, 2]) == 1.0 and float(jnp.sum(jnp.abs(kernel))) == 4.0
    if norm == 'batch':
        # In training mode BN uses batch statistics: no longer exact, but close.
        train_out, _ = deep.apply(built, x, train=True, mutable=['batch_stats'])
        train_want, _ = shallow.apply(sv, x, train=True, mutable=['batch_stats'])
        assert float(jnp.max(jnp.abs(train_out - train_want))) < 0.5 * float(
            jnp.max(jnp.abs(train_want))
        )


def test_a_source_of_the_same_depth_is_a_warm_restart_of_its_own_solution():
    net = _net(8, False, 'batch')
    x = jax.random.normal(jax.random.PRNGKey(4), (16, 8, 8, 3))
    sv = _randomise(net.init(jax.random.PRNGKey(5), x, train=False), jax.random.PRNGKey(6))
    other = net.init(jax.random.PRNGKey(7), x, train=False)  # another init, the same tree
    built = construct.extend(net, sv, other, np.asarray(x), net.layout(), net.layout())
    jax.tree.map(np.testing.assert_array_equal, built['params'], sv['params'])
    jax.tree.map(np.testing.assert_array_equal, built['batch_stats'], sv['batch_stats'])
    a = config_lib.default_config().model
    construct.check_compatible(a, a)  # Same depth: accepted.


def test_construction_refuses_a_source_it_cannot_extend():
    import ml_collections

    from resjax import config_lib

    a, b = config_lib.default_config().model, config_lib.default_config().model
    b.depth = 56
    construct.check_compatible(a, b)
    for key, value, words in [
        ('residual', False, 'model.residual'),
        ('width', 0.5, 'model.width'),
        ('depth', 8, 'as deep as the source run'),
    ]:
        c = ml_collections.ConfigDict(b.to_dict())
        c[key] = value
        with pytest.raises(ValueError, match=words):
            construct.check_compatible(a, c)
    # All-projection nets: a warm restart is accepted, added blocks are refused (their
    # projection shortcuts would stay random).
    p, q = (ml_collections.ConfigDict(m.to_dict()) for m in (a, b))
    p.shortcut = q.shortcut = 'all_projection'
    construct.check_compatible(p, p)
    with pytest.raises(ValueError, match='all_projection'):
        construct.check_compatible(p, q)


def test_descent_cosines_against_numpy_on_hand_made_activations():
    rng = np.random.default_rng(0)
    h = {n: rng.normal(size=(4, 6, 6, 3)) for n in ('000_stem', '001_s1_b1', '002_s1_b2')}
    h['003_s2_b1'] = rng.normal(size=(4, 3, 3, 6))  # A shape change: no cosine.
    h['002_s1_b2'] = h['001_s1_b1'].copy()  # A block that changes nothing: cosine 0.
    branch = rng.normal(size=(4, 6, 6, 3))
    inter = {n: {'output': (jnp.asarray(v, jnp.float32),)} for n, v in h.items()}
    inter['001_s1_b1']['branch'] = (jnp.asarray(branch, jnp.float32),)
    g = {n: {'output': jnp.asarray(rng.normal(size=v.shape), jnp.float32)} for n, v in h.items()}
    out = blocks.descent_cosines(inter, g)
    assert sorted(out) == [
        'branch_descent_cos/001_s1_b1', 'descent_cos/001_s1_b1', 'descent_cos/002_s1_b2'
    ]  # fmt: skip

    def cos(a, b):
        return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    down = -np.asarray(g['000_stem']['output'], np.float64)
    assert float(out['descent_cos/001_s1_b1']) == pytest.approx(
        cos(h['001_s1_b1'] - h['000_stem'], down), abs=1e-6
    )
    assert float(out['branch_descent_cos/001_s1_b1']) == pytest.approx(cos(branch, down), abs=1e-6)
    assert float(out['descent_cos/002_s1_b2']) == 0.0
    # A change along the negative gradient has cosine 1.
    inter['001_s1_b1']['output'] = (jnp.asarray(h['000_stem'] + 0.1 * down, jnp.float32),)
    out = blocks.descent_cosines(inter, g)
    assert float(out['descent_cos/001_s1_b1']) == pytest.approx(1.0, abs=1e-5)


def test_a_plain_block_replaced_by_the_identity_passes_its_input_exactly():
    model = _net(14, residual=False)
    x = jax.random.normal(jax.random.PRNGKey(9), (16, 8, 8, 3))
    variables = _randomise(
        model.init(jax.random.PRNGKey(10), x, train=False), jax.random.PRNGKey(11)
    )
    moments = construct.block_input_moments(model, variables, np.asarray(x))
    lay = model.layout()
    lesioned = construct.replace_by_identity(lay, variables, '002_stage1_block2', moments)
    test = jax.random.normal(jax.random.PRNGKey(12), (16, 8, 8, 3))  # Not the calibration set.
    before = dict(blocks.block_outputs(_intermediates(model, variables, test)))
    after = dict(blocks.block_outputs(_intermediates(model, lesioned, test)))
    np.testing.assert_allclose(after['002_stage1_block2'], after['001_stage1_block1'], atol=1e-5)
    np.testing.assert_array_equal(after['001_stage1_block1'], before['001_stage1_block1'])
    assert float(jnp.max(jnp.abs(before['002_stage1_block2'] - before['001_stage1_block1']))) > 0.1
    for block in ('003_stage2_block1', '001_stage1_block1'):  # Shape change; a residual net's.
        target = lay if block.startswith('003') else _net(14, residual=True).layout()
        with pytest.raises(ValueError, match='only a stride-1 plain block'):
            construct.replace_by_identity(target, variables, block, moments)
