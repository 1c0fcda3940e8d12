"""Defaults shared by the files in configs/ (which are loaded by path and cannot import each
other). A config file calls `default_config()`, edits what its experiment changes, and ends
with `finalize(config, arg)`, which applies the `smoke` argument."""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Iterator

import ml_collections

from resjax import study_config

# The configs `finalize` has applied its argument to (a config file may skip it), by id
# (a ConfigDict is not hashable).
_FINALIZED: dict[int, weakref.ref] = {}


def default_config() -> ml_collections.ConfigDict:
    """Every key resjax reads, with the ResNet paper's CIFAR-10 recipe as the values."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # the init (and, with data_seed None, the data order and augmentation)
    # The data order and augmentation draws; None = `seed`. One seed with two data seeds: one
    # init, two SGD noise draws (linear mode connectivity, Frankle et al. 2020).
    c.data_seed = ml_collections.config_dict.placeholder(int)

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = 'cifar10'
    c.dataset.data_dir = ''  # TFDS data_dir, or the root of an image folder.
    c.dataset.augment = 'cifar'  # 'cifar' (pad 4, crop, flip) | 'imagenet' | 'none'
    c.dataset.image_size = 224  # ImageNet-style datasets only: training crop size.
    c.dataset.num_train_examples = 0  # 0 = all; else the first N (smoke runs).
    c.dataset.num_classes = 10  # 'synthetic' only; real datasets know theirs.
    c.dataset.image_shape = (32, 32, 3)  # 'synthetic' only.
    c.dataset.shuffle_buffer = 16_384
    # image_folder only: 'auto' (decoded into memory with PIL if it fits, else tf.data) |
    # 'numpy' | 'tfds'; decoded folders are cached in cache_dir ('' = ~/.cache/resjax/image_folder).
    c.dataset.loader = 'auto'
    c.dataset.cache_dir = ''

    c.model = ml_collections.ConfigDict()
    c.model.family = 'cifar'  # 'cifar' (6n+2, 16/32/64) | 'imagenet' (18/34/50/101/152)
    c.model.depth = 20
    c.model.residual = True  # False: the plain counterpart, same layers, no shortcuts.
    c.model.shortcut = 'identity_pad'  # (A) | 'projection' (B) | 'all_projection' (C)
    c.model.norm = 'batch'  # 'batch' | 'none'
    c.model.width = 1.0  # multiplies every stage width
    c.model.preactivation = False  # He et al. 2016 "Identity Mappings" block
    c.model.zero_init_last = False  # zero-init each block's last BN scale (Goyal et al. 2017)
    # Plain nets only: 'param' gives each shape-keeping conv the kernel diag(a)·δ + b·W
    # (DiracNets), 'init' starts it at the Dirac kernel δ; 'none' = He init (docs/config.md).
    c.model.dirac = 'none'
    c.model.shortcut_scale = 1.0  # residual nets: y = F(x) + scale * shortcut(x)
    c.model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'; params stay float32
    # How conv weight gradients are computed (same numbers): 'auto' = 'stored' on CPU (from a
    # stored copy of the conv input: no recomputation in XLA:CPU's transposes), XLA's own on
    # GPU/TPU | 'xla' | 'stored'. See resjax/models/conv.py.
    c.model.weight_grad = 'auto'
    # Run each stage's identical blocks (all but the first; stages of >= 3 blocks) as one
    # lax.scan: same numbers and parameter tree, one block compiled per stage, so compile time
    # stops growing with depth (pays for deep nets only: docs/benchmarks.md). Steps with
    # per-layer probes, and HVPs on CPU, run the blocks unrolled.
    c.model.scan_blocks = False

    c.train = ml_collections.ConfigDict()
    c.train.steps = 64_000
    c.train.batch_size = 128  # global, over all devices and processes
    c.train.eval_batch_size = 500
    c.train.lr = 0.1
    c.train.momentum = 0.9
    c.train.nesterov = False
    c.train.weight_decay = 1e-4
    c.train.weight_decay_mode = 'l2'  # 'l2': added to the gradient (paper) | 'decoupled'
    c.train.schedule = 'piecewise'  # 'piecewise' | 'cosine' | 'constant'
    c.train.lr_boundaries = (0.5, 0.75)  # fractions of train.steps (paper: 32k, 48k of 64k)
    c.train.lr_decay_factor = 0.1
    c.train.warmup = 'linear'  # 'linear' ramp | 'constant' (paper's ResNet-110: lr/10)
    c.train.warmup_steps = 0
    c.train.log_every_steps = 100
    c.train.eval_every_steps = 2_000
    c.train.checkpoint_every_steps = 2_000
    c.train.keep_checkpoints = 3
    c.train.on_nonfinite = 'stop'  # 'stop' (exit 3) | 'skip' the update
    c.train.allow_config_change = False  # resume even if model/dataset differ from the workdir
    # Workdir of a trained shallower net of the same kind: start from its solution, the added
    # blocks identities (He et al. 2015's construction; resjax/construct.py). '' = random init.
    c.train.init_from = ''

    c.probes = ml_collections.ConfigDict()
    c.probes.every_steps = 0  # per-layer signal probes; 0 = off
    c.probes.hessian_every_steps = 0  # curvature probes; 0 = off
    c.probes.init_angle_every_steps = 0  # per-filter angle from init (resjax/probes/angles.py)
    c.probes.hessian_iters = 20  # max power-iteration HVPs per probe (tol 1e-3, warm start)
    c.probes.hessian_trace_samples = 0  # Hutchinson samples for hessian/trace; 0 = off
    c.probes.hessian_batch = 'current'  # 'current' | 'fixed'
    c.probes.bn_mode = 'train'  # 'train' (batch stats, running stats untouched) | 'eval'

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = 'jit'  # 'jit' over a mesh of all devices | 'pmap'
    c.parallel.sync_bn = False  # pmap only: BN statistics over all devices
    return c


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the config argument: `smoke` shrinks the run to seconds on a CPU, keeping every
    code path (eval, checkpoints, probes) on, like big_vision's `runlocal`."""
    args = set((arg or '').split(',')) - {''}
    unknown = args - {'smoke'}
    if unknown:
        raise ValueError(f'unknown config argument(s) {sorted(unknown)}; the only one is smoke')
    _check_keys(config)
    _FINALIZED[id(config)] = weakref.ref(config)
    if 'smoke' in args:
        c = config
        c.model.width = min(c.model.width, 0.25)
        c.dataset.num_train_examples = 256
        c.train.steps = 10
        c.train.batch_size = 16
        c.train.eval_batch_size = 64
        c.train.warmup_steps = min(c.train.warmup_steps, 2)
        c.train.log_every_steps = 2
        c.train.eval_every_steps = 5
        c.train.checkpoint_every_steps = 5
        if c.dataset.augment == 'imagenet':
            c.dataset.image_size = 64
        c.probes.every_steps = c.probes.every_steps and 5
        c.probes.hessian_every_steps = c.probes.hessian_every_steps and 5
        c.probes.init_angle_every_steps = c.probes.init_angle_every_steps and 5
        c.probes.hessian_iters = min(c.probes.hessian_iters, 5)
    return config


def check_loaded(config: ml_collections.ConfigDict, config_file: str) -> None:
    """Checks a config as a script loaded it from `config_file` (`path[:arg]`): no key that
    resjax does not read, and an argument only if the file applied it through `finalize`
    (a file that skips `finalize` would otherwise ignore `:smoke` silently). Raises ValueError
    (one line)."""
    _check_keys(config)
    path, _, arg = config_file.partition('.py:')
    finalized = _FINALIZED.get(id(config), lambda: None)() is config
    if arg and not finalized:
        raise ValueError(
            f'{path}.py ignores its argument {arg!r}: its get_config(arg) must end with '
            '`return config_lib.finalize(config, arg)`'
        )


def _check_keys(config: ml_collections.ConfigDict) -> None:
    """Refuses a key that resjax does not read (a typo in a config file would otherwise be
    recorded and ignored): the same rule the locked config applies to command-line overrides."""
    reference = default_config()
    reference.study = study_config.default_study_config()
    for name, known in _unknown_keys(config, reference):
        if name.startswith('study.inspect.'):
            continue  # Inspection options: the study checks them against the library's own.
        close = difflib.get_close_matches(name.rsplit('.', 1)[-1], known, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ValueError(f'config key {name!r} is not one resjax reads{hint}')


def _unknown_keys(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ''
) -> Iterator[tuple[str, list[str]]]:
    for key, value in config.items():
        if key not in reference:
            yield prefix + key, list(reference.keys())
        elif isinstance(value, ml_collections.ConfigDict):
            yield from _unknown_keys(value, reference[key], f'{prefix}{key}.')
