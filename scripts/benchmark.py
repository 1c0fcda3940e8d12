"""Times resjax's train step (and optionally HVPs, the input pipeline, PyTorch) on synthetic data.

  python scripts/benchmark.py --models resnet20,plain56 --batch 64,128 --json bench.json
  python scripts/benchmark.py --models resnet20 --steps 5 --hvp --probes --torch --pipeline

Model names: `resnet<depth>` / `plain<depth>`. Depths 18/34/50/101/152 are the ImageNet family
(224x224x3, 1000 classes, option B shortcuts); any other 6n+2 depth is the CIFAR family
(32x32x3, 10 classes, option A shortcuts). One device (jax.devices()[0]); SGD with momentum 0.9
and weight decay 1e-4, lr 0.1, as the paper's CIFAR recipe.

Each record (one per model, batch) holds the compile time of the jitted, state-donating train
step (trace + lower + compile wall time) and the median / min / max over `--steps` individually
timed steps after 2 warm-up steps. `--probes` adds the same for the train step with the
per-layer signal probes (`steps.make_train_step(probes=True)`). `--hvp` adds one gradient vs
one Hessian-vector product of the mean loss on the same batch (BatchNorm in train mode, running
statistics not updated), recomputed and with the gradient linearised once
(`curvature.Hessian`; `linearize_ms` is the first linearised HVP, linearisation included),
and the train loop's sharpness probe (`hessian.make_sharpness_probe`: algebraic lambda_max by
power iteration to relative tolerance 1e-3, at most `--max_hvps` HVPs plus one for the
gradient curvature), timed after its compile; and lambda_max to 1e-3 with at most
`--power_iters` HVPs, BN in eval mode with running statistics set to the batch's own
(`batch_statistics`; `lambda_max_lin*`: the gradient linearised once, as `curvature.Hessian`
does on one batch; `lambda_max_recomputed*`: every HVP recomputed), construction included.
`--torch` adds the same model in PyTorch eager (CIFAR family and ImageNet bottleneck depths;
float32, and bfloat16 by autocast on a GPU; channels-last on a GPU); with `--hvp` its
double-backward HVP recomputed and with the gradient graph reused (PyHessian's), and on the
CIFAR family PyHessian's `eigenvalues()` on resjax's own weights and batch (the `pyhessian`
package; same BN mode, tolerance and HVP budget). `--pipeline` adds the images/sec of the digits and
synthetic input pipelines (numpy batches), and with `--image_folder ROOT` those of an image folder
(`ROOT/{train,test}/<class>/<image>`, e.g. CIFAR-10 as files; CIFAR augmentation) through each
loader (`time_folder_pipelines`): the numpy loader's start-up (list, decode, write the cache;
then again from its cache) and the tf.data loader's (list, check, first batch), the images/sec
of each after its first batch (tf.data: in its first epoch, files read and decoded, and in its
second, from its in-memory cache), and the numpy loader's ratio to the step's images/sec.
`--width` scales every stage width (`model.width`).

Exit codes: 0 done; 2 bad flags (one line, before anything compiles).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from absl import app, flags, logging

from resjax import config_lib, data, models, optim, steps, xla
from resjax.models.resnet import IMAGENET_STAGES
from resjax.probes import curvature, hessian, signals

DEFAULT_MODELS = ['resnet20', 'plain20', 'resnet56', 'plain56', 'resnet110', 'plain110']
WARMUP = 2
LAMBDA_TOL = 1e-3
MAX_HVPS = 20  # As the training probe's default budget, probes.hessian_iters.
POWER_ITERS = 100  # PyHessian's eigenvalues(maxIter=100).


# ----- Model names ------------------------------------------------------------------------


def model_config(
    name: str,
    dtype: str = 'float32',
    weight_grad: str = 'auto',
    scan_blocks: bool = False,
    width: float = 1.0,
):
    """`resnet56` / `plain34` -> (config with its `model` block set, image shape, classes).

    Raises ValueError (one line) for a name that is not a model of either family.
    """
    match = re.fullmatch(r'(resnet|plain)(\d+)', name)
    if not match:
        raise ValueError(f'model {name!r} is not resnet<depth> or plain<depth>')
    config = config_lib.default_config()
    m = config.model
    m.depth, m.residual, m.dtype = int(match[2]), match[1] == 'resnet', dtype
    m.weight_grad, m.scan_blocks, m.width = weight_grad, scan_blocks, width
    if m.depth in IMAGENET_STAGES:  # Before 6n+2: 50 and 152 are both.
        m.family, m.shortcut = 'imagenet', 'projection'
        shape, classes = (224, 224, 3), 1000
    else:
        m.family, shape, classes = 'cifar', (32, 32, 3), 10
    try:
        models.validate_model_config(m)
    except ValueError as e:
        raise ValueError(f'model {name!r}: {e}') from None
    config.train.schedule = 'constant'
    return config, shape, classes


# ----- Timing -------------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], n: int, warmup: int = WARMUP) -> list[float]:
    """Seconds of each of `n` calls of `fn` (blocked until ready), after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(n):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def ms_stats(times: Sequence[float], prefix: str) -> dict[str, float]:
    """{prefix: median ms, prefix_min: ..., prefix_max: ...}."""
    ms = [1e3 * t for t in times]
    return {prefix: statistics.median(ms), f'{prefix}_min': min(ms), f'{prefix}_max': max(ms)}


def compile_timed(fn: Callable, *args):
    """(`jax.jit`-compiled `fn` for `args`, trace + lower + compile wall seconds)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_train_step(
    model, tx, schedule, state, batch, num_steps: int, compiler_options=None, **step_kwargs
):
    """Compiles and times one train-step variant (`step_kwargs` go to steps.make_train_step).

    The state is donated, as in training; returns (the state after the timed steps, record
    fields).
    """
    step = xla.jit(
        steps.make_train_step(model, tx, schedule, **step_kwargs),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
    compiled, compile_s = compile_timed(step, state, batch)
    holder = [state]

    def one_step():
        holder[0], metrics = compiled(holder[0], batch)
        return holder[0], metrics

    times = time_calls(one_step, num_steps)
    return holder[0], {'compile_s': compile_s, **ms_stats(times, 'step_ms')}


def synthetic_batch(batch_size: int, shape, classes: int) -> dict:
    """Gaussian images and uniform labels (fixed key): the benchmark's only data."""
    key_x, key_y = jax.random.split(jax.random.PRNGKey(0))
    return {
        'image': jax.random.normal(key_x, (batch_size, *shape), jnp.float32),
        'label': jax.random.randint(key_y, (batch_size,), 0, classes, jnp.int32),
    }


def time_curvature(
    model,
    state,
    batch,
    num_calls: int,
    max_hvps: int,
    log,
    compiler_options=None,
    power_iters: int = POWER_ITERS,
) -> dict:
    """One gradient vs one HVP of the same loss (medians), and power iteration to LAMBDA_TOL.

    `lambda_max` is the algebraic top eigenvalue from the train loop's sharpness probe (at most
    `max_hvps` HVPs); `lambda_max_lin` and `lambda_max_recomputed` the library's `lambda_max`
    with at most `power_iters`, timed with the operator's construction.
    """
    # The probed loss of resjax.probes: mean cross-entropy, BN in train mode on this batch with
    # its running statistics not updated.
    loss = hessian.probe_loss(model, 'train')
    key_v, key_power = jax.random.split(jax.random.PRNGKey(1))
    args = (state.params, state.batch_stats, batch)

    def grad(params, batch_stats, batch):
        return jax.grad(lambda p: loss(p, batch, batch_stats))(params)

    jit = functools.partial(xla.jit, compiler_options=compiler_options)
    grad_fn, grad_compile = compile_timed(jit(grad), *args)
    grad_times = time_calls(lambda: grad_fn(*args), num_calls)

    # The library's HVPs: recomputing the forward and backward pass each time, and with the
    # gradient linearised once on this batch (what a power or Lanczos loop on it uses).
    start = time.perf_counter()
    recompute = curvature.Hessian(loss, state.params, batch, state.batch_stats, linearize=False)
    v = jax.block_until_ready(recompute.random(key_v))
    jax.block_until_ready(recompute.hvp(v))
    hvp_compile = time.perf_counter() - start
    hvp_times = time_calls(lambda: recompute.hvp(v), num_calls)
    linearized = curvature.Hessian(loss, state.params, batch, state.batch_stats, linearize=True)
    jax.block_until_ready(linearized.hvp(v))  # compiles (shared with the sharpness probe)
    linearized = curvature.Hessian(loss, state.params, batch, state.batch_stats, linearize=True)
    linearize_times = time_calls(lambda: linearized.hvp(v), 1, warmup=0)  # linearises
    lin_times = time_calls(lambda: linearized.hvp(v), num_calls)

    grad_ms, hvp_ms = 1e3 * statistics.median(grad_times), 1e3 * statistics.median(hvp_times)
    lin_ms = 1e3 * statistics.median(lin_times)
    log(
        f'  grad {grad_ms:.1f} ms, hvp {hvp_ms:.1f} ms, linearised hvp {lin_ms:.1f} ms '
        f'(first {1e3 * linearize_times[0]:.1f}; compiled in {grad_compile:.1f}, '
        f'{hvp_compile:.1f} s)'
    )
    # The train loop's sharpness probe: host-driven power iteration around one jitted HVP.
    probe = hessian.make_sharpness_probe(model, num_iters=max_hvps, tol=LAMBDA_TOL)
    probe(*args, linearized.unflatten(v))  # compiles
    # A fresh start vector, drawn outside the timing (eagerly, each leaf shape would compile).
    v0 = jax.block_until_ready(
        xla.run_once(functools.partial(otu.tree_random_like, key_power), state.params)
    )
    start = time.perf_counter()
    out, _ = probe(*args, v0)
    power_s = time.perf_counter() - start
    eig, num = out['hessian/lambda_max'], out['hessian/num_hvps']

    # lambda_max to LAMBDA_TOL with up to `power_iters` HVPs (PyHessian's `eigenvalues()`
    # defaults) and BN in eval mode (PyHessian puts the model in eval mode), operator
    # construction included but not the compile: with the gradient linearised once, and
    # recomputing it every HVP.
    eval_loss, power = hessian.probe_loss(model, 'eval'), {}
    stats = batch_statistics(model, state.params, state.batch_stats, batch)
    for name, linearize in (('lambda_max_lin', True), ('lambda_max_recomputed', False)):
        make = functools.partial(
            curvature.Hessian, eval_loss, state.params, batch, stats, linearize
        )
        jax.block_until_ready(make().hvp(v))  # compiles
        start = time.perf_counter()
        h = make()
        value, _, n = curvature.lambda_max(h.hvp, h.flatten(v0), power_iters, LAMBDA_TOL)
        power |= {name: value, f'{name}_s': time.perf_counter() - start, f'{name}_hvps': n}
    log(
        f'  lambda_max (BN eval) to {LAMBDA_TOL:g}: {power["lambda_max_lin"]:.5g} in '
        f'{power["lambda_max_lin_s"]:.2f} s ({power["lambda_max_lin_hvps"]} HVPs, linearised); '
        f'{power["lambda_max_recomputed_s"]:.2f} s '
        f'({power["lambda_max_recomputed_hvps"]} HVPs, recomputed)'
    )
    return power | {
        'loss_eval': h.loss(),
        'eval_batch_stats': stats,
        'grad_ms': grad_ms,
        'hvp_ms': hvp_ms,
        'hvp_over_grad': hvp_ms / grad_ms,
        'hvp_linearized_ms': lin_ms,
        'linearize_ms': 1e3 * linearize_times[0],
        'lambda_max': float(eig),
        'lambda_max_s': power_s,
        'lambda_max_hvps': int(num),
        # Includes one forward + backward pass (linearize); compare with hvp_linearized_ms.
        'lambda_max_ms_per_hvp': 1e3 * power_s / int(num),
    }


def time_pipeline(
    dataset_name: str, batch_size: int, image_shape=None, num_batches: int = 20
) -> float:
    """Images/sec of an in-memory `resjax.data` pipeline's train_batches (numpy, host only),
    after its first batch; image folders: `time_folder_pipelines`."""
    config = config_lib.default_config()
    config.dataset.name, config.dataset.augment = dataset_name, 'none'
    config.train.batch_size = batch_size
    if image_shape is not None:
        config.dataset.image_shape = tuple(image_shape)
        config.dataset.num_train_examples = max(batch_size, 64)  # 224x224 images are big.
    batches = data.create_dataset(config, 0, 1).train_batches(0)
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return batch_size * num_batches / (time.perf_counter() - start)


def images_per_sec(batches, batch_size: int, num_batches: int, chunks: int = 5) -> float:
    """Median over `chunks` runs of `num_batches // chunks` batches of `batches`: images/sec."""
    per_chunk = max(1, num_batches // chunks)
    rates = []
    for _ in range(chunks):
        start = time.perf_counter()
        for _ in range(per_chunk):
            next(batches)
        rates.append(batch_size * per_chunk / (time.perf_counter() - start))
    return statistics.median(rates)


def time_folder_pipelines(
    root: str, batch_size: int, num_batches: int = 200, log: Callable[[str], None] = logging.info
) -> dict[str, float]:
    """An image folder through the numpy loader (cache in a fresh temporary folder, deleted
    after) and, if TensorFlow is installed, the tf.data loader; CIFAR augmentation. Seconds to
    the first batch of a new dataset (`*_startup_s`) and images/sec after it, medians of 5."""
    config = config_lib.default_config()
    config.dataset.name, config.dataset.data_dir = 'image_folder', root
    config.dataset.augment = 'cifar'
    config.train.batch_size = batch_size
    record = {}

    def start(loader: str):
        config.dataset.loader = loader
        begin = time.perf_counter()
        ds = data.create_dataset(config, 0, 1)
        batches = ds.train_batches(0)
        next(batches)
        return ds, batches, time.perf_counter() - begin

    config.dataset.cache_dir = tempfile.mkdtemp(prefix='resjax_bench_')
    try:
        _, _, record['folder_numpy_startup_s'] = start('numpy')  # Decodes, writes the cache.
        _, batches, record['folder_numpy_cached_startup_s'] = start('numpy')
        record['folder_numpy_images_per_sec'] = images_per_sec(batches, batch_size, num_batches)
    finally:
        shutil.rmtree(config.dataset.cache_dir)
    log(
        f'  image folder, numpy loader: start-up {record["folder_numpy_startup_s"]:.1f} s '
        f'(cached {record["folder_numpy_cached_startup_s"]:.1f} s), '
        f'{record["folder_numpy_images_per_sec"]:.0f} img/s'
    )
    try:
        import tensorflow as _  # noqa: F401
    except ImportError:
        log('  image folder, tf.data loader: TensorFlow not installed; skipped')
        return record
    ds, batches, record['folder_tfds_startup_s'] = start('tfds')
    record['folder_tfds_images_per_sec'] = images_per_sec(batches, batch_size, num_batches)
    # On to the second epoch (the first batch wholly in it), read from tf.data's cache.
    for _ in range(-(-ds.num_train // batch_size) - num_batches // 5 * 5):
        next(batches)
    record['folder_tfds_epoch2_images_per_sec'] = images_per_sec(batches, batch_size, num_batches)
    log(
        f'  image folder, tf.data loader: start-up {record["folder_tfds_startup_s"]:.1f} s, '
        f'{record["folder_tfds_images_per_sec"]:.0f} img/s in the first epoch, '
        f'{record["folder_tfds_epoch2_images_per_sec"]:.0f} in the second'
    )
    return record


# ----- PyTorch reference ----------------------------------------------------------------------


def torch_resnet_cifar(depth: int, residual: bool, num_classes: int = 10):
    """The CIFAR ResNet / plain net of `resjax.models` in PyTorch: 3x3 stem, 3 stages of
    16/32/64 basic blocks, option A shortcuts (subsample, zero-pad channels), BN, no conv bias."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            if residual:
                y = y + F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
            return F.relu(y)

    n = (depth - 2) // 6
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for b in range(n):
            layers.append(Block(cin, width, 2 if stage > 0 and b == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    return net


def torch_resnet50_family(depth: int, residual: bool, num_classes: int = 1000):
    """The ImageNet bottleneck ResNet (50/101/152) of `resjax.models` in PyTorch: 7x7/2 stem,
    3x3/2 max-pool, stride on the 3x3 conv (as torchvision's "v1.5"), projection shortcuts where
    the shape changes (option B), BN, no conv bias. Same parameter count as torchvision's."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn(cin, cout, k, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)
        )

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = 4 * width
            self.body = nn.Sequential(
                conv_bn(cin, width, 1, 1),
                nn.ReLU(),
                conv_bn(width, width, 3, stride),
                nn.ReLU(),
                conv_bn(width, cout, 1, 1),
            )
            changes = residual and (stride != 1 or cin != cout)
            self.shortcut = conv_bn(cin, cout, 1, stride) if changes else None

        def forward(self, x):
            y = self.body(x)
            if residual:
                y = y + (x if self.shortcut is None else self.shortcut(x))
            return F.relu(y)

    _, blocks = IMAGENET_STAGES[depth]
    layers = [conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            layers.append(Bottleneck(cin, width, 2 if stage > 0 and b == 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    return net


def torch_model(config, num_classes: int):
    """The PyTorch twin of `config.model` (CIFAR family, or ImageNet bottleneck depths)."""
    m = config.model
    if m.family == 'cifar':
        return torch_resnet_cifar(m.depth, m.residual, num_classes)
    return torch_resnet50_family(m.depth, m.residual, num_classes)


def torch_on_cuda() -> bool:
    """Whether PyTorch times on the GPU: JAX runs on one and torch sees it."""
    import torch

    return jax.default_backend() == 'gpu' and torch.cuda.is_available()


def torch_supports(config) -> str | None:
    """Why PyTorch cannot time `config` here (None if it can)."""
    m = config.model
    if m.family != 'cifar' and (m.depth not in (50, 101, 152) or m.shortcut != 'projection'):
        return 'ImageNet family: bottleneck depths with projection shortcuts only'
    if m.dtype != 'float32' and not torch_on_cuda():
        return 'bfloat16 on CUDA only'
    return None


def batch_statistics(model, params, batch_stats, batch: dict):
    """Running BN statistics equal to `batch`'s own, so that eval mode computes what train mode
    does on it (as after long training on this batch; a random init's running statistics, 0
    and 1, give an eval-mode net of another scale entirely). One training-mode forward: flax
    stores 0.9 old + 0.1 new, which is solved for new."""

    def solve(params, batch_stats, images):
        variables = {'params': params, 'batch_stats': batch_stats}
        _, new = model.apply(variables, images, train=True, mutable=['batch_stats'])
        return jax.tree.map(lambda n, o: (n - 0.9 * o) / 0.1, new['batch_stats'], batch_stats)

    return xla.run_once(solve, params, batch_stats, batch['image'])  # eager flax is slow


def time_torch(
    config,
    shape,
    classes: int,
    batch_size: int,
    num_steps: int,
    jax_params: int,
    hvp: bool,
    log,
    jax_weights: tuple | None = None,
    jax_batch: dict | None = None,
    power_iters: int = POWER_ITERS,
) -> dict:
    """PyTorch eager: SGD step (momentum 0.9, wd 1e-4) and, with `hvp`, grad vs double-backward
    HVP recomputed (`torch_hvp_ms`) and with the gradient graph reused (`torch_hvp_reused_ms`),
    on the same architecture and batch size; with `jax_weights` (layers in forward order,
    params, batch_stats, loss) and `jax_batch` (numpy), PyHessian's lambda_max on resjax's own
    weights and batch. On the GPU (if JAX runs on one and torch sees it) in channels-last
    layout (NHWC, as XLA's), bfloat16 by autocast (float32 parameters, bfloat16 convolutions and
    matmuls, as resjax's `model.dtype`)."""
    import contextlib

    import torch
    from torch.nn import functional as F

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    use_cuda = torch_on_cuda()
    torch.backends.cudnn.benchmark = use_cuda  # Fixed shapes: pick kernels, as XLA autotunes.
    device = torch.device('cuda' if use_cuda else 'cpu')
    layout = torch.channels_last if use_cuda else torch.contiguous_format
    sync = torch.cuda.synchronize if use_cuda else (lambda: None)
    net = torch_model(config, classes).to(device, memory_format=layout).train()
    params = list(net.parameters())
    num_params = sum(p.numel() for p in params)
    log(f'  parameters: resjax {jax_params}, torch {num_params}')
    assert num_params == jax_params, (num_params, jax_params)
    height, width, channels = shape
    x = torch.randn(batch_size, channels, height, width, device=device)
    x = x.to(memory_format=layout)
    y = torch.randint(0, classes, (batch_size,), device=device)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    if config.model.dtype == 'bfloat16':
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    def timed(fn):
        def run():
            out = fn()
            sync()
            return out

        return time_calls(run, num_steps)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    step_ms = 1e3 * statistics.median(timed(train_step))
    record = {'torch_step_ms': step_ms, 'torch_images_per_sec': batch_size / step_ms * 1e3}
    if hvp:
        for m in net.modules():  # Momentum 0: running statistics stay as they are.
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.0
        v = [torch.randn_like(p) for p in params]
        grad = lambda: torch.autograd.grad(F.cross_entropy(net(x), y), params)

        def hvp_once():
            g = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
            return torch.autograd.grad(g, params, grad_outputs=v)

        record['torch_grad_ms'] = 1e3 * statistics.median(timed(grad))
        record['torch_hvp_ms'] = 1e3 * statistics.median(timed(hvp_once))
        # PyHessian's HVP: the gradient graph built once, each HVP a backward through it.
        g = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
        reused = lambda: torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)
        record['torch_hvp_reused_ms'] = 1e3 * statistics.median(timed(reused))
        del g
        if jax_weights is not None:
            record.update(time_pyhessian(net, jax_weights, jax_batch, power_iters, log))
    return record


def copy_weights(net, layers: Sequence[str], params, batch_stats) -> None:
    """Loads resjax's parameters and BN statistics (numpy) into its PyTorch twin: resjax's
    `layers` in forward order (`signals.layer_order`) against the twin's conv, BN and linear
    modules in registration order (its forward order); HWIO kernels transposed to OIHW,
    (in, out) dense kernels to (out, in)."""
    import numpy as np
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    mods = [m for m in net.modules() if isinstance(m, kinds)]
    assert len(layers) == len(mods), (len(layers), len(mods))
    flat_params = flax.traverse_util.flatten_dict(params, sep='/')
    flat_stats = flax.traverse_util.flatten_dict(batch_stats, sep='/')
    as_tensor = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
    with torch.no_grad():
        for name, m in zip(layers, mods, strict=True):
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(as_tensor(flat_params[f'{name}/kernel'].transpose(3, 2, 0, 1)))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(as_tensor(flat_params[f'{name}/kernel'].T))
                m.bias.copy_(as_tensor(flat_params[f'{name}/bias']))
            else:
                m.weight.copy_(as_tensor(flat_params[f'{name}/scale']))
                m.bias.copy_(as_tensor(flat_params[f'{name}/bias']))
                m.running_mean.copy_(as_tensor(flat_stats[f'{name}/mean']))
                m.running_var.copy_(as_tensor(flat_stats[f'{name}/var']))


def time_pyhessian(net, jax_weights, jax_batch, power_iters: int, log) -> dict:
    """PyHessian's `hessian(...).eigenvalues()` (power iteration to relative change
    LAMBDA_TOL, at most `power_iters` HVPs, its graph built once) on resjax's weights and batch,
    BN in eval mode (PyHessian sets it), timed with its construction; its HVPs counted."""
    import importlib

    import numpy as np
    import torch
    from torch.nn import functional as F

    # The module, not the `hessian` class that pyhessian/__init__ puts under the same name.
    pyh = importlib.import_module('pyhessian.hessian')
    layers, params, batch_stats, jax_loss = jax_weights
    copy_weights(net, layers, params, batch_stats)
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(jax_batch['image'].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(np.asarray(jax_batch['label'], np.int64))
    with torch.no_grad():
        loss = float(F.cross_entropy(net(x), y))
    log(f'  torch loss on resjax weights {loss:.6f} (resjax {jax_loss:.6f})')
    if abs(loss - jax_loss) > 1e-4 * abs(jax_loss):
        raise AssertionError(f'the twins differ: loss {loss} vs {jax_loss}')
    calls, hvp = [0], pyh.hessian_vector_product

    def counted(*args, **kwargs):
        calls[0] += 1
        return hvp(*args, **kwargs)

    pyh.hessian_vector_product = counted
    try:
        net.zero_grad(set_to_none=True)  # PyHessian reads p.grad after its backward.
        start = time.perf_counter()
        h = pyh.hessian(net, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        eigenvalues, _ = h.eigenvalues(maxIter=power_iters, tol=LAMBDA_TOL, top_n=1)
        seconds = time.perf_counter() - start
    finally:
        pyh.hessian_vector_product = hvp
    log(f'  PyHessian eigenvalues(): {eigenvalues[0]:.5g} in {seconds:.2f} s ({calls[0]} HVPs)')
    return {'pyhessian_lambda_max': eigenvalues[0], 'pyhessian_s': seconds,
            'pyhessian_hvps': calls[0]}  # fmt: skip


# ----- The benchmark ----------------------------------------------------------------------------


def run_benchmark(
    model_names: Sequence[str],
    batches: Sequence[int],
    dtype: str = 'float32',
    num_steps: int = 10,
    *,
    hvp: bool = False,
    probes: bool = False,
    torch: bool = False,
    pipeline: bool = False,
    image_folder: str = '',
    width: float = 1.0,
    max_hvps: int = MAX_HVPS,
    power_iters: int = POWER_ITERS,
    weight_grads: Sequence[str] = ('auto',),
    scan_blocks: Sequence[bool] = (False,),
    xla_options: Sequence[str] = ('resjax',),
    log: Callable[[str], None] = logging.info,
) -> list[dict]:
    """One record per (model, batch, weight_grad, scan_blocks, xla_options); see the module
    docstring and `RECORD_COLUMNS`. `weight_grads` lists `model.weight_grad` settings to
    compare, `scan_blocks` `model.scan_blocks` settings, `xla_options` the compile options of
    the step, gradient and HVP: 'resjax' (`resjax.xla.jit`'s, as training uses) and/or 'jax'
    (jaxlib's defaults).

    Every name is validated before anything compiles (ValueError, one line).
    """
    configs = {
        (name, g, s): model_config(name, dtype, g, s, width)
        for name in model_names
        for g in weight_grads
        for s in scan_blocks
    }
    if torch:
        try:
            import torch as _  # noqa: F401
        except ImportError:
            log('torch: not installed (pip install torch, or the [torch] extra); skipped')
            torch = False
    device = jax.devices()[0]
    jobs = [
        (name, b, g, s, o)
        for name in model_names
        for b in batches
        for g in weight_grads
        for s in scan_blocks
        for o in xla_options
    ]
    records, pipeline_cache, start = [], {}, time.perf_counter()
    for i, (name, batch_size, weight_grad, scan, options) in enumerate(jobs):
        config, shape, classes = configs[name, weight_grad, scan]
        log(
            f'[{i + 1}/{len(jobs)}] {name} batch {batch_size} {dtype} '
            f'weight_grad={weight_grad} scan_blocks={scan} xla_options={options}'
        )
        compiler_options = {} if options == 'jax' else None  # None: xla.jit's.

        # ----- Model, optimizer, state, synthetic batch -----
        model = models.create_model(config.model, classes)
        tx = optim.create_optimizer(config.train)
        schedule = optim.learning_rate_schedule(config.train)
        init = functools.partial(steps.create_train_state, model, tx, shape, config.seed)
        state = xla.run_once(init)
        batch = xla.run_once(functools.partial(synthetic_batch, batch_size, shape, classes))
        num_params = sum(x.size for x in jax.tree.leaves(state.params))
        record = {
            'model': name,
            'batch': batch_size,
            'dtype': dtype,
            'weight_grad': weight_grad,
            'scan_blocks': scan,
            'xla_options': options,
            'params': num_params,
            'device': device.device_kind,
            'backend': jax.default_backend(),
            'steps': num_steps,
        }

        # ----- Curvature first: the train step donates (consumes) the state -----
        curv, jax_weights, jax_batch = {}, None, None
        if hvp:
            curv = time_curvature(
                model, state, batch, num_steps, max_hvps, log, compiler_options, power_iters
            )
            stats = curv.pop('eval_batch_stats')  # BN statistics of the eval-mode lambda_max
            if torch and not torch_supports(config):  # PyHessian on these weights and batch.
                variables = {'params': state.params, 'batch_stats': state.batch_stats}
                layers = signals.layer_order(model, variables, (batch['image'],), train=False)
                weights = jax.device_get((variables['params'], stats))
                jax_weights = (layers, *weights, curv['loss_eval'])
                jax_batch = jax.device_get(batch)

        # ----- Train step, and its variant with the per-layer signal probes -----
        state, timing = time_train_step(
            model, tx, schedule, state, batch, num_steps, compiler_options
        )
        record.update(timing)
        record['images_per_sec'] = batch_size / record['step_ms'] * 1e3
        if probes:
            _, timing = time_train_step(
                model, tx, schedule, state, batch, num_steps, compiler_options, probes=True
            )
            record.update({f'probes_{k}': v for k, v in timing.items()})
            record['probes_overhead'] = record['probes_step_ms'] / record['step_ms']
        record.update(curv)
        log(
            f'  compile {record["compile_s"]:.1f} s, step {record["step_ms"]:.1f} ms, '
            f'{record["images_per_sec"]:.0f} img/s'
        )

        # ----- PyTorch -----
        why_not = torch and torch_supports(config)
        if why_not:
            log(f'  torch: {why_not}; skipped')
        elif torch:
            record.update(
                time_torch(
                    config,
                    shape,
                    classes,
                    batch_size,
                    num_steps,
                    num_params,
                    hvp,
                    log,
                    jax_weights,
                    jax_batch,
                    power_iters,
                )  # fmt: skip
            )
            record['torch_ratio'] = record['images_per_sec'] / record['torch_images_per_sec']

        # ----- Input pipelines (per batch size and image shape, measured once) -----
        if pipeline:
            for key, args in (
                ('pipeline_images_per_sec', ('digits', batch_size)),
                ('pipeline_synthetic_images_per_sec', ('synthetic', batch_size, shape)),
            ):
                if args not in pipeline_cache:
                    pipeline_cache[args] = time_pipeline(*args)
                record[key] = pipeline_cache[args]
            if image_folder:
                args = ('image_folder', batch_size)
                if args not in pipeline_cache:
                    pipeline_cache[args] = time_folder_pipelines(image_folder, batch_size, log=log)
                record.update(pipeline_cache[args])
                rate = record['folder_numpy_images_per_sec']
                record['folder_over_step'] = rate / record['images_per_sec']
        records.append(record)
        elapsed = time.perf_counter() - start
        log(f'  done; ETA {elapsed / (i + 1) * (len(jobs) - i - 1):.0f} s')
    return records


# (key, header, format) in table order; a column is shown when any record has the key.
RECORD_COLUMNS = [
    ('model', 'model', '{}'),
    ('batch', 'batch', '{}'),
    ('dtype', 'dtype', '{}'),
    ('weight_grad', 'weight_grad', '{}'),
    ('scan_blocks', 'scan', '{}'),
    ('xla_options', 'xla_options', '{}'),
    ('params', 'params', '{:,}'),
    ('compile_s', 'compile_s', '{:.1f}'),
    ('step_ms', 'step_ms', '{:.1f}'),
    ('step_ms_min', 'min', '{:.1f}'),
    ('step_ms_max', 'max', '{:.1f}'),
    ('images_per_sec', 'img/s', '{:.0f}'),
    ('probes_compile_s', 'probes_compile_s', '{:.1f}'),
    ('probes_step_ms', 'probes_step_ms', '{:.1f}'),
    ('probes_overhead', 'probes/plain', '{:.2f}'),
    ('grad_ms', 'grad_ms', '{:.1f}'),
    ('hvp_ms', 'hvp_ms', '{:.1f}'),
    ('hvp_over_grad', 'hvp/grad', '{:.2f}'),
    ('hvp_linearized_ms', 'hvp_lin_ms', '{:.1f}'),
    ('lambda_max', 'lambda_max', '{:.4g}'),
    ('lambda_max_s', 'lmax_s', '{:.1f}'),
    ('lambda_max_hvps', 'lmax_hvps', '{}'),
    ('lambda_max_ms_per_hvp', 'ms/hvp_loop', '{:.1f}'),
    ('torch_images_per_sec', 'torch_img/s', '{:.0f}'),
    ('torch_ratio', 'jax/torch', '{:.2f}'),
    ('lambda_max_lin_s', 'lmax_lin_s', '{:.2f}'),
    ('lambda_max_lin_hvps', 'lmax_lin_hvps', '{}'),
    ('lambda_max_recomputed_s', 'lmax_recomp_s', '{:.2f}'),
    ('torch_hvp_ms', 'torch_hvp_ms', '{:.1f}'),
    ('torch_hvp_reused_ms', 'torch_hvp_reused_ms', '{:.1f}'),
    ('pyhessian_lambda_max', 'pyh_lambda_max', '{:.5g}'),
    ('pyhessian_s', 'pyh_s', '{:.2f}'),
    ('pyhessian_hvps', 'pyh_hvps', '{}'),
    ('pipeline_images_per_sec', 'digits_img/s', '{:.0f}'),
    ('pipeline_synthetic_images_per_sec', 'synth_img/s', '{:.0f}'),
    ('folder_numpy_startup_s', 'folder_np_start_s', '{:.1f}'),
    ('folder_numpy_cached_startup_s', 'cached_start_s', '{:.1f}'),
    ('folder_numpy_images_per_sec', 'folder_np_img/s', '{:.0f}'),
    ('folder_over_step', 'np/step', '{:.1f}'),
    ('folder_tfds_startup_s', 'folder_tf_start_s', '{:.1f}'),
    ('folder_tfds_images_per_sec', 'folder_tf_img/s', '{:.0f}'),
    ('folder_tfds_epoch2_images_per_sec', 'tf_epoch2_img/s', '{:.0f}'),
]


def format_table(records: Sequence[dict]) -> str:
    """Aligned text table, one row per record, right-aligned numbers."""
    cols = [c for c in RECORD_COLUMNS if any(c[0] in r for r in records)]
    rows = [[h for _, h, _ in cols]]
    rows += [[fmt.format(r[k]) if k in r else '-' for k, _, fmt in cols] for r in records]
    widths = [max(len(row[j]) for row in rows) for j in range(len(cols))]
    align = lambda j, s: s.ljust(widths[j]) if j == 0 else s.rjust(widths[j])
    return '\n'.join('  '.join(align(j, s) for j, s in enumerate(row)) for row in rows)


# ----- Command line -------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    # Defined on demand, so that tests can import this file without claiming flag names.
    flags.DEFINE_list('models', DEFAULT_MODELS, 'resnet<depth> / plain<depth>, comma-separated.')
    flags.DEFINE_list('batch', ['128'], 'Batch size(s), comma-separated.')
    flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (model.dtype).')
    flags.DEFINE_string('json', None, 'Write the records here as a JSON list.')
    flags.DEFINE_integer('steps', 10, 'Timed steps (after 2 warm-up steps).')
    flags.DEFINE_integer('max_hvps', MAX_HVPS, '--hvp: most HVPs of the sharpness probe.')
    flags.DEFINE_integer(
        'power_iters', POWER_ITERS, '--hvp: most HVPs of lambda_max to 1e-3 (and PyHessian).'
    )
    flags.DEFINE_bool('torch', False, 'Also time the same model in PyTorch eager (if installed).')
    flags.DEFINE_bool('hvp', False, 'Also time a gradient vs an HVP, and lambda_max.')
    flags.DEFINE_bool('probes', False, 'Also time the train step with per-layer signal probes.')
    flags.DEFINE_bool('pipeline', False, 'Also time the digits and synthetic input pipelines.')
    flags.DEFINE_string(
        'image_folder',
        '',
        'With --pipeline: also time this image folder through both loaders (CIFAR augmentation).',
    )
    flags.DEFINE_float('width', 1.0, 'model.width of every model (stage widths x this).')
    flags.DEFINE_list(
        'weight_grad', ['auto'], 'model.weight_grad setting(s) to compare: auto, xla, stored.'
    )
    flags.DEFINE_list(
        'scan_blocks', ['false'], 'model.scan_blocks setting(s) to compare: false, true.'
    )
    flags.DEFINE_list(
        'xla_options',
        ['resjax'],
        "Compile options to compare: resjax (resjax.xla.jit's, as training) and/or jax "
        "(jaxlib's defaults). Step, gradient and HVP; lambda_max always uses resjax's.",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        batches = [int(b) for b in FLAGS.batch if b.isdigit() and int(b) > 0]
        counts = (FLAGS.steps, FLAGS.max_hvps, FLAGS.power_iters)
        if len(batches) != len(FLAGS.batch) or min(counts) <= 0:
            raise ValueError(
                '--batch, --steps, --max_hvps and --power_iters must be positive integers'
            )
        if set(FLAGS.scan_blocks) - {'false', 'true'}:
            raise ValueError(f'--scan_blocks={FLAGS.scan_blocks}: use false and/or true')
        if set(FLAGS.xla_options) - {'resjax', 'jax'}:
            raise ValueError(f'--xla_options={FLAGS.xla_options}: use resjax and/or jax')
        if FLAGS.image_folder and not os.path.isdir(FLAGS.image_folder):
            raise ValueError(f'--image_folder={FLAGS.image_folder!r} is not a directory')
        for name in FLAGS.models:  # Validates the model config, weight_grad included.
            for weight_grad in FLAGS.weight_grad:
                for scan in FLAGS.scan_blocks:
                    model_config(name, 'float32', weight_grad, scan == 'true', FLAGS.width)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    records = run_benchmark(
        FLAGS.models,
        batches,
        FLAGS.dtype,
        FLAGS.steps,
        hvp=FLAGS.hvp,
        probes=FLAGS.probes,
        torch=FLAGS.torch,
        pipeline=FLAGS.pipeline,
        image_folder=FLAGS.image_folder,
        width=FLAGS.width,
        max_hvps=FLAGS.max_hvps,
        power_iters=FLAGS.power_iters,
        weight_grads=FLAGS.weight_grad,
        scan_blocks=[s == 'true' for s in FLAGS.scan_blocks],
        xla_options=FLAGS.xla_options,
    )
    print(format_table(records))
    if FLAGS.json:
        with open(FLAGS.json, 'w') as f:
            json.dump(records, f, indent=2)
        logging.info('Wrote %d records to %s', len(records), FLAGS.json)


if __name__ == '__main__':
    define_flags()
    app.run(main)
