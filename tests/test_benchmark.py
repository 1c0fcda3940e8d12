"""scripts/benchmark.py end to end on tiny models: complete, finite records; no speed asserts."""

import importlib.util
import math
import pathlib

import jax
import pytest

from resjax import models
from resjax.probes import signals

SCRIPT = pathlib.Path(__file__).parent.parent / 'scripts' / 'benchmark.py'


@pytest.fixture(scope='module')
def benchmark():
    spec = importlib.util.spec_from_file_location('benchmark_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _num_params(benchmark, name):
    config, shape, classes = benchmark.model_config(name)
    model = models.create_model(config.model, classes)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, *shape)))
    )
    return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_model_names(benchmark):
    assert benchmark.model_config('resnet20')[0].model.family == 'cifar'
    assert benchmark.model_config('plain50')[0].model.family == 'imagenet'
    assert benchmark.model_config('plain50')[2] == 1000
    assert not benchmark.model_config('plain56')[0].model.residual
    for bad in ('resnet21', 'vgg16', 'resnet'):
        with pytest.raises(ValueError, match=bad):
            benchmark.model_config(bad)


@pytest.mark.slow
def test_records(benchmark):
    # max_hvps=1 keeps the curvature part short; the sharpness probe is tested elsewhere.
    records = benchmark.run_benchmark(
        ['resnet8'], [4], 'float32', 2, hvp=True, max_hvps=1, power_iters=2
    )
    assert [r['model'] for r in records] == ['resnet8']
    keys = ['compile_s', 'step_ms', 'step_ms_min', 'step_ms_max', 'images_per_sec']
    keys += ['grad_ms', 'hvp_ms', 'hvp_over_grad', 'lambda_max_s', 'lambda_max_hvps']
    keys += ['hvp_linearized_ms', 'linearize_ms']
    for r in records:
        assert r['batch'] == 4 and r['dtype'] == 'float32'
        assert r['device'] and r['backend'] == jax.default_backend()
        assert r['params'] == _num_params(benchmark, r['model'])
        for k in keys:
            assert math.isfinite(r[k]) and r[k] > 0, (k, r[k])
        assert r['step_ms_min'] <= r['step_ms'] <= r['step_ms_max']
        assert math.isfinite(r['lambda_max'])
        assert 2 <= r['lambda_max_hvps'] <= 3  # <= max_hvps per power run, + grad curvature
        assert math.isfinite(r['lambda_max_lin']) and r['lambda_max_lin_s'] > 0
        assert r['lambda_max_lin_hvps'] == r['lambda_max_recomputed_hvps'] == 2  # power_iters
    table = benchmark.format_table(records).splitlines()
    assert len(table) == 2 and len({len(line) for line in table}) == 1


def test_torch_model_matches_parameter_count(benchmark):
    torch = pytest.importorskip('torch')
    for name, depth, residual in (('resnet8', 8, True), ('plain20', 20, False)):
        net = benchmark.torch_resnet_cifar(depth, residual)
        assert sum(p.numel() for p in net.parameters()) == _num_params(benchmark, name)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    for name in ('resnet50', 'plain50'):  # torchvision's resnet50 has 25,557,032 too.
        config, _, classes = benchmark.model_config(name)
        net = benchmark.torch_model(config, classes)
        assert sum(p.numel() for p in net.parameters()) == _num_params(benchmark, name)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_torch_twin_on_copied_weights_computes_the_same_logits(benchmark):
    # What makes the PyHessian comparison one of the same model: resjax's weights, loaded in
    # forward order, give the twin resjax's logits (BN eval mode, nonzero running statistics).
    torch = pytest.importorskip('torch')
    import numpy as np

    config, shape, classes = benchmark.model_config('resnet8')
    model = models.create_model(config.model, classes)
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    stats = jax.tree.map(lambda s: s + np.float32(0.3), variables['batch_stats'])
    variables = {'params': variables['params'], 'batch_stats': stats}
    layers = signals.layer_order(model, variables, (x,), train=False)
    net = benchmark.torch_model(config, classes).eval()
    benchmark.copy_weights(net, layers, *jax.device_get(list(variables.values())))
    with torch.no_grad():
        logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    expected = model.apply(variables, x, train=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_image_folder_pipeline_and_width(benchmark, tmp_path):
    import numpy as np
    from PIL import Image

    for split, n in (('train', 6), ('test', 2)):
        for label in ('cat', 'dog'):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((32, 32, 3), 40 * i, np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / label / f'{i}.png')
    record = benchmark.time_folder_pipelines(str(tmp_path), 4, num_batches=5, log=print)
    keys = ['folder_numpy_startup_s', 'folder_numpy_cached_startup_s']
    keys += ['folder_numpy_images_per_sec']
    if importlib.util.find_spec('tensorflow'):
        keys += ['folder_tfds_startup_s', 'folder_tfds_images_per_sec']
        keys += ['folder_tfds_epoch2_images_per_sec']
    assert sorted(record) == sorted(keys)
    assert all(math.isfinite(v) and v > 0 for v in record.values()), record
    half = benchmark.model_config('plain20', width=0.5)[0]
    model = models.create_model(half.model, 10)
    assert model.widths == (8, 16, 32)
