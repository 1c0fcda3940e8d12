"""Values that would give degenerate or silently wrong results, and a constructed run whose
source trained on: each is refused with one line, or gives the right number."""

import dataclasses
import json
import os
import re
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import construct, inspection, landscape, runs, train
from resjax import workdir as workdir_lib
from resjax.inspection import common, interpolate
from resjax.probes import blocks, curvature


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('dataset.num_train_examples', -5, 'must be 0 (all) or positive'),
        ('probes.every_steps', -5, 'must be 0 (off) or positive'),
        ('probes.hessian_trace_samples', -1, 'must be 0 (off) or positive'),
        ('probes.hessian_iters', 0, 'must be positive'),
    ],
)
def test_negative_or_zero_config_values_are_refused(digits_config, key, value, message):
    digits_config.probes.hessian_every_steps = 2
    group, name = key.split('.')
    digits_config[group][name] = value
    with pytest.raises(train.ConfigError, match=re.escape(f'{key}={value} {message}')):
        train.validate_config(digits_config)


@pytest.mark.parametrize(
    'probe, option, value, message',
    [
        ('landscape1d', 'range', -1.0, 'must be positive'),
        ('interpolate', 'grid', 1, 'must be at least 3'),
        ('shattering', 'shatter_radius', 0.0, 'must be positive'),
        ('eval', 'eval_examples', -3, 'must be 0 .all. or positive'),
        ('hessian', 'trace_samples', 0, 'must be positive'),
        ('interpolate', 'alpha_min', 2.0, 'must be below --alpha_max'),
    ],
)
def test_degenerate_inspection_options_are_refused(probe, option, value, message):
    opts = dataclasses.replace(inspection.Options(), **{option: value})
    with pytest.raises(inspection.InspectError, match=rf'--{option}={value} {message}'):
        inspection.validate([probe], opts)


def test_recomputed_bn_statistics_need_eval_mode():
    opts = dataclasses.replace(inspection.Options(), bn_stats='recompute', bn_mode='train')
    with pytest.raises(inspection.InspectError, match='--bn_stats=recompute .* --bn_mode=eval'):
        inspection.validate(['interpolate'], opts)
    inspection.validate(['interpolate'], dataclasses.replace(opts, bn_mode='eval'))


def _quadratic():
    params = {'w': jnp.ones((3, 3, 1, 4)), 'b': jnp.zeros(4)}

    def loss(p, batch):
        return jnp.mean((batch['x'] @ p['w'].reshape(9, 4) + p['b']) ** 2)

    return params, loss


def test_no_examples_and_misshapen_directions_are_value_errors():
    params, loss = _quadratic()
    for empty in ({'x': jnp.ones((0, 9))}, {'x': jnp.ones((4, 9)), 'mask': jnp.zeros(4)}):
        with pytest.raises(ValueError, match='hold no example'):
            curvature.Hessian(loss, params, empty)
        with pytest.raises(ValueError, match='hold no example'):
            landscape.slice_1d(loss, params, params, np.zeros(1), empty)
    wrong = {'w': jnp.ones((3, 3, 1, 1)), 'b': jnp.zeros(4)}
    batch = {'x': jnp.ones((5, 9))}
    grid = np.linspace(-1, 1, 3)
    with pytest.raises(ValueError, match=r"direction 0: leaf \['w'\] has shape \(3, 3, 1, 1\)"):
        landscape.slice_2d(loss, params, (wrong, params), grid, grid, batch)
    with pytest.raises(ValueError, match='direction 1 is not a tree like params'):
        landscape.slice_2d(loss, params, (params, {'w': params['w']}), grid, grid, batch)


def test_linear_cka_in_feature_space_for_many_examples_equals_the_gram_form():
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (600, 2, 2, 3))  # n = 600 > d = 12: the feature-space form
    y = jnp.tanh(x.reshape(600, -1) @ jax.random.normal(ky, (12, 7)))
    xc, yc = (np.asarray(a.reshape(600, -1), np.float64) for a in (x, y))
    xc, yc = xc - xc.mean(0), yc - yc.mean(0)
    k, m = xc @ xc.T, yc @ yc.T  # The Gram form in float64: the reference.
    expected = (k * m).sum() / np.sqrt((k * k).sum() * (m * m).sum())
    np.testing.assert_allclose(blocks.linear_cka(x, y), expected, rtol=1e-5)
    assert 0.2 < expected < 0.99  # Neither trivially 1 nor unrelated.


def test_init_from_a_run_of_another_task_is_refused_before_anything_is_written(
    digits_config, tmp_path
):
    source = digits_config.copy_and_resolve_references()
    source.dataset.name = 'synthetic'
    source.dataset.num_classes = 5
    source.dataset.image_shape = (8, 8, 1)
    os.makedirs(tmp_path / 'source')
    workdir_lib.write_config(source, str(tmp_path / 'source'))
    digits_config.model.depth = 14
    digits_config.train.init_from = str(tmp_path / 'source')
    with pytest.raises(train.ConfigError, match="dataset.name='synthetic', this run 'digits'"):
        train.train_and_evaluate(digits_config, str(tmp_path / 'deep'))
    assert not (tmp_path / 'deep').exists()


def test_interpolating_to_a_run_with_other_parameter_shapes_is_refused():
    def fake(head):
        params = {'stem': jnp.zeros((3, 3)), 'head': jnp.zeros((4, head))}
        config = types.SimpleNamespace(model=types.SimpleNamespace(to_dict=lambda: {'depth': 8}))
        state = types.SimpleNamespace(params=params)
        return types.SimpleNamespace(config=config, state=state, workdir=f'run{head}')

    opts = dataclasses.replace(inspection.Options(), to='other')
    original = runs.load_run
    try:
        runs.load_run = lambda *a: fake(5)
        with pytest.raises(inspection.InspectError, match='other parameter shapes'):
            interpolate.interpolate_start([fake(10)], opts)
        runs.load_run = lambda *a: fake(10)
        assert interpolate.interpolate_start([fake(10)], opts)['other'] is not None
    finally:
        runs.load_run = original


@pytest.mark.slow
def test_a_constructed_run_keeps_its_start_when_its_source_is_gone(digits_config, tmp_path):
    source, deep = str(tmp_path / 'source'), str(tmp_path / 'deep')
    digits_config.model.width = 0.25
    train.train_and_evaluate(digits_config, source)
    built = digits_config.copy_and_resolve_references()
    built.model.depth = 14
    built.train.init_from = source
    built.train.steps = 3
    train.train_and_evaluate(built, deep)
    start = jax.device_get(common.initial_state(runs.load_run(deep)).params)
    manager = construct.checkpoint.checkpoint_manager(
        deep, read_only=True, subdir=construct.START_DIR
    )
    saved = construct.checkpoint.saved_metadata(manager, 0)['init_from']
    assert saved['step'] == digits_config.train.steps and saved['workdir'] == source
    # The source trained on, or was deleted: the resumed run and inspection rebuilt their start
    # from its latest step (other numbers), or failed.
    shutil.rmtree(source)
    built.train.steps = 6
    built.probes.every_steps = 3  # init_distance/ at step 3, measured from the start
    train.train_and_evaluate(built, deep)  # Resumes at 3.
    rows = [json.loads(line) for line in open(os.path.join(deep, 'metrics.jsonl'))]
    distances = [r['init_distance/global'] for r in rows if 'init_distance/global' in r]
    assert len(distances) == 1
    run_3 = runs.load_run(deep, step=3)
    at_3 = blocks.init_distance(run_3.state.params, start)
    np.testing.assert_allclose(distances[0], at_3['init_distance/global'], rtol=1e-5)
    again = jax.device_get(common.initial_state(run_3).params)
    jax.tree.map(np.testing.assert_array_equal, again, start)
