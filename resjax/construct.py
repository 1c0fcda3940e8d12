"""The constructed solution of He et al. 2015 (§1, §4.1): a deeper net that computes exactly what
a trained shallower one computes, its added blocks identities. A source of the same depth gives
the source's own solution: a warm restart, with a fresh optimizer and this run's schedule (the
control for a constructed run restarted at the same learning rate).

"There exists a solution by construction to the deeper model: the added layers are identity
mapping, and the other layers are copied from the learned shallower model." `train.init_from`
names the shallower run's workdir; the deeper run then starts from that solution instead of a
random init, so training it asks whether SGD keeps (or improves on) a solution that exists.

The map, for CIFAR-family nets (6n+2, post-activation), read off the two nets' block layouts
(`resjax.models.layout`): stem and head are copied, block b of each stage of the shallow net
becomes block b of the same stage, and the blocks appended at the end of each stage
(`layout.added_blocks`: stride 1, as many channels in as out) are identities:
- convolutions: Dirac kernels (1 at the centre tap from channel c to channel c), biases 0; a
  Dirac-parametrised conv (`model.dirac='param'`, kernel diag(a)·δ + b·W) gets a = 1, b = 0
  and keeps its W;
- plain block, BN: running mean and variance set to those of the block's input (per channel,
  measured on `CALIBRATION_EXAMPLES` training examples with the shallow net in eval mode), scale
  sqrt(var + eps) and offset mean, so that eval-mode BN is x -> x exactly, and training-mode BN
  (batch statistics) is close to it; the ReLUs pass x because x >= 0 (a ReLU's output);
- residual block: as plain, then its residual branch removed as a lesion removes it (the last
  BN's scale and offset 0, or without BN the last conv's kernel and bias 0), so F(x) = 0 in both
  modes and relu(0 + x) = x.
Eval-mode outputs equal the shallow net's up to float32 rounding (tests/test_blocks.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resjax import checkpoint, models, runs, steps
from resjax import workdir as workdir_lib

PyTree = Any
CALIBRATION_EXAMPLES = 1024
START_DIR = 'constructed_start'  # In a constructed run's workdir: its step-0 state.
BN_EPSILON = 1e-5  # resjax.models.resnet.Norm's
# model keys that must agree between the shallow and the deep net.
SAME_KEYS = (
    'family',
    'residual',
    'shortcut',
    'norm',
    'width',
    'preactivation',
    'dtype',
    'dirac',
    'shortcut_scale',
)


def check_compatible(shallow: ml_collections.ConfigDict, deep: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line) unless `deep` (config.model) can hold `shallow`'s solution."""
    for key in SAME_KEYS:
        if shallow[key] != deep[key]:
            raise ValueError(
                f'train.init_from: the source run has model.{key}={shallow[key]!r}, this run '
                f'{deep[key]!r}; they must agree'
            )
    if deep.family != 'cifar' or deep.preactivation:
        raise ValueError(
            'train.init_from: the identity construction is for post-activation CIFAR-family '
            'nets (model.family=cifar, model.preactivation=False)'
        )
    if deep.depth < shallow.depth:
        raise ValueError(
            f'train.init_from: this run (depth {deep.depth}) must be as deep as the source run '
            f'(depth {shallow.depth}) or deeper'
        )
    if deep.depth > shallow.depth and deep.shortcut == 'all_projection':
        # Every added block would keep a random projection shortcut: not an identity.
        raise ValueError(
            "train.init_from: model.shortcut='all_projection' gives every added block a "
            'projection shortcut, which the construction cannot make an identity; use '
            "'identity_pad' or 'projection'"
        )
    if deep.depth > shallow.depth and deep.shortcut_scale != 1.0:
        # An added block without its branch computes relu(scale * x): not an identity.
        raise ValueError(
            f'train.init_from: model.shortcut_scale={deep.shortcut_scale} makes an added block '
            'without its branch relu(scale * x), not an identity; the construction needs 1.0'
        )


def check_source(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line) unless `train.init_from` is a resjax run whose model this
    config's can extend (reads its config.json only: cheap, before anything compiles)."""
    try:
        source = runs.load_config(config.train.init_from)
    except runs.RunError as e:
        raise ValueError(f'train.init_from: {e}') from None
    check_compatible(source.model, config.model)
    for key in ('name', 'num_classes', 'image_shape'):
        a, b = source.dataset.get(key), config.dataset.get(key)
        if key == 'image_shape' and a is not None and b is not None:
            a, b = tuple(a), tuple(b)
        if a != b:
            raise ValueError(
                f'train.init_from: the source run has dataset.{key}={a!r}, this run {b!r}; '
                'a constructed net starts from a solution of the same task'
            )


def identity_block(
    spec: models.BlockSpec, params: PyTree, stats: PyTree, mean: jax.Array, var: jax.Array
) -> tuple[PyTree, PyTree]:
    """The deep net's (params, batch_stats) with block `spec` set to the identity for inputs
    with these per-channel statistics (module docstring)."""
    flat, flat_stats = (flax.traverse_util.flatten_dict(t, sep='/') for t in (params, stats))
    for conv in spec.layers:
        kernel = flat[f'{conv}/kernel']
        if conv in spec.dirac_layers:
            # diag(a)·δ + b·W is δ at a = 1, b = 0 whatever W is; W keeps its init, so that
            # b's gradient <dL/dK, W> is not zero and training can leave the identity.
            a, b = (f'{conv}/{name}' for name in models.DIRAC_PARAMS)
            flat[a], flat[b] = jnp.ones_like(flat[a]), jnp.zeros_like(flat[b])
        else:
            flat[f'{conv}/kernel'] = models.dirac_kernel(kernel.shape, kernel.dtype)
        if f'{conv}/bias' in flat:
            flat[f'{conv}/bias'] = jnp.zeros_like(flat[f'{conv}/bias'])
    for norm in spec.norms:
        flat[f'{norm}/scale'] = jnp.sqrt(var + BN_EPSILON)
        flat[f'{norm}/bias'] = mean
        flat_stats[f'{norm}/mean'], flat_stats[f'{norm}/var'] = mean, var
    params = flax.traverse_util.unflatten_dict(flat, sep='/')
    if spec.residual:
        params = models.layout.zero_under(params, spec.branch_end)
    return params, flax.traverse_util.unflatten_dict(flat_stats, sep='/')


def replace_by_identity(
    layout: models.Layout, variables: PyTree, block: str, moments: dict
) -> PyTree:
    """{'params', 'batch_stats'} of `variables` with plain block `block` (stride 1, as many
    channels in as out) replaced by the identity for its inputs, as the construction makes
    added blocks (exact in eval mode: its input is a ReLU output, x >= 0); `moments` are
    `block_input_moments` of the net, whose entry for the block before gives the BN
    statistics. ValueError for a residual block or one that changes the shape."""
    spec = layout.block(block)
    if spec.residual or spec.stride != 1 or spec.channels_in != spec.channels_out:
        raise ValueError(
            f'{block!r} is a residual block or changes the shape: only a stride-1 plain block '
            'with as many channels in as out can be replaced by the identity'
        )
    before = layout.names[layout.names.index(block) - 1]
    params, stats = identity_block(
        spec, variables['params'], variables.get('batch_stats', {}), *moments[before]
    )
    return {**variables, 'params': params, 'batch_stats': stats}


def block_input_moments(
    model: Any, variables: PyTree, images: np.ndarray, batch: int = 256
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{stem or block name: (per-channel mean, variance)} of its output over `images` (eval
    mode), averaged over examples and pixels, in float32."""
    apply = jax.jit(lambda x: model.apply(variables, x, train=False, mutable=['intermediates'])[1])
    sums: dict[str, list] = {}
    for start in range(0, len(images), batch):
        inter = flax.traverse_util.flatten_dict(apply(images[start : start + batch]), sep='/')
        for path, (h,) in inter.items():
            if not path.endswith('/output'):
                continue
            name = path.split('/')[-2]
            h = h.astype(jnp.float32).reshape(-1, h.shape[-1])
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += h.shape[0]
            acc[1] = acc[1] + jnp.sum(h, 0)
            acc[2] = acc[2] + jnp.sum(h * h, 0)
    out = {}
    for name, (n, s, sq) in sums.items():
        mean = s / n
        out[name] = (mean, jnp.maximum(sq / n - mean * mean, 0.0))
    return out


def extend(
    shallow_model: Any,
    shallow_variables: PyTree,
    deep_variables: PyTree,
    images: np.ndarray,
    shallow_layout: models.Layout,
    deep_layout: models.Layout,
) -> PyTree:
    """Deep {'params', 'batch_stats'} holding the shallow net's solution (module docstring).
    `deep_variables` gives the deep tree's structure (any init); `images` calibrate BN; the
    layouts say which blocks correspond. With as many blocks as the shallow net, this is the
    shallow solution itself (a warm restart)."""
    moments = None  # Measured only if a block is added.
    sp, ss = shallow_variables['params'], shallow_variables.get('batch_stats', {})
    params = flax.core.unfreeze(deep_variables['params'])
    stats = flax.core.unfreeze(deep_variables.get('batch_stats', {}))
    blocks = {b.name for b in deep_layout.blocks}
    for name in [n for n in params if n not in blocks]:  # stem, head
        shapes = [jax.tree.map(jnp.shape, t[name]) for t in (sp, params)]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f'train.init_from: layer {name} of the source run has shapes {shapes[0]}, '
                f'this run {shapes[1]} (another number of classes or channels?)'
            )
        params[name] = sp[name]
        if name in stats:
            stats[name] = ss[name]
    shallow_stages = shallow_layout.stages()
    added = {b.name for b in models.layout.added_blocks(deep_layout, shallow_layout)}
    for spec in deep_layout.blocks:
        source = shallow_stages[spec.stage]
        if spec.name not in added:
            params[spec.name] = sp[source[spec.index - 1].name]
            if spec.name in stats:
                stats[spec.name] = ss[source[spec.index - 1].name]
            continue
        if moments is None:
            moments = block_input_moments(shallow_model, shallow_variables, images)
        mean, var = moments[source[-1].name]
        params, stats = identity_block(spec, params, stats, mean, var)
    # Every leaf its own buffer: added blocks share their statistics' arrays, and the training
    # step donates the state (one buffer donated twice is an error).
    return jax.tree.map(lambda x: jnp.array(x, copy=True), {'params': params, 'batch_stats': stats})


def initial_state(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    workdir: str | None = None,
) -> steps.TrainState:
    """The run's step-0 state: `steps.create_train_state` from `config.seed`, or, with
    `train.init_from`, the constructed start that the run in `workdir` saved when it began
    (`saved_start`), built anew (`build`) only for a run that saved none. Raises ValueError (one
    line) for a start or source that cannot be read or does not fit."""
    if not config.train.init_from:
        return steps.create_train_state(model, tx, image_shape, config.seed)
    if workdir is not None:
        abstract = jax.eval_shape(
            lambda: steps.create_train_state(model, tx, image_shape, config.seed)
        )
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
        )
        saved = saved_start(workdir, abstract)
        if saved is not None:
            return saved
    return build(config, model, tx, image_shape)[0]


def saved_start(workdir: str, abstract_state: Any) -> steps.TrainState | None:
    """The constructed start `<workdir>/constructed_start` holds (`save_start`), restored onto
    `abstract_state`; None if the run saved none (it predates saved starts, or is not
    constructed). Raises ValueError (one line) if it is damaged."""
    if not os.path.isdir(os.path.join(workdir, START_DIR)):
        return None
    manager = checkpoint.checkpoint_manager(workdir, read_only=True, subdir=START_DIR)
    with contextlib.closing(manager):
        if manager.latest_step() is None:
            return None
        try:
            return checkpoint.restore(manager, abstract_state)
        except checkpoint.CheckpointError as e:
            raise ValueError(f'train.init_from: {e}') from None


def save_start(workdir: str, state: steps.TrainState, source: dict) -> None:
    """Saves a constructed run's start in `<workdir>/constructed_start`, with `source` (the
    source workdir and the step it was built from) beside it: a resumed run and inspection
    read it back instead of rebuilding it from a source that may have trained on or gone."""
    manager = checkpoint.checkpoint_manager(workdir, keep=1, subdir=START_DIR)
    with contextlib.closing(manager):
        checkpoint.save(manager, state, {'init_from': source})
        checkpoint.check_saved(manager)


def build(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
) -> tuple[steps.TrainState, dict]:
    """`steps.create_train_state` from `config.seed` with params and BN statistics replaced by
    the constructed solution of the `train.init_from` run's latest checkpoint (optimizer state
    fresh), and `{'workdir', 'step', 'still_training'}` of that source. Raises ValueError (one
    line) for a source that cannot be read or does not fit."""
    state = steps.create_train_state(model, tx, image_shape, config.seed)
    try:
        source = runs.load_run(config.train.init_from, batch=256)
    except runs.RunError as e:
        raise ValueError(f'train.init_from: {e}') from None
    check_compatible(source.config.model, config.model)
    if source.dataset.image_shape != tuple(image_shape):
        raise ValueError(
            f'train.init_from: the source run saw images of shape {source.dataset.image_shape}, '
            f'this run {tuple(image_shape)}'
        )
    images = runs.train_examples(source, CALIBRATION_EXAMPLES)['image']
    shallow = {'params': source.state.params, 'batch_stats': source.state.batch_stats}
    deep = extend(
        source.model,
        shallow,
        {'params': state.params, 'batch_stats': state.batch_stats},
        images,
        models.model_layout(source.config.model),
        models.model_layout(config.model),
    )
    state = state.replace(
        params=deep['params'], batch_stats=deep['batch_stats'], opt_state=tx.init(deep['params'])
    )
    busy = workdir_lib.is_locked(source.workdir)
    return state, {
        'workdir': os.path.abspath(source.workdir),
        'step': source.step,
        'still_training': busy,
    }
