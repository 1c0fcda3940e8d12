"""Checkpoint inspection: what `scripts/inspect_checkpoint.py` does, as library functions.

`load_run(workdir, step)` restores a run read-only (the workdir is never written: orbax's
read-only manager, only finalised steps). Each probe of `PROBES` is a compute function (one
loaded run -> its numbers: no figure, no file) and a draw function in `resjax.plots` (every
run's numbers -> a figure); `run_probe(name, runs, out_dir, opts)` runs both and writes the PNG
beside its numbers (JSON, and npz for arrays).

Semantics shared by every probe (README "Inspecting a checkpoint"):
- loss = MEAN softmax cross-entropy in nats over the probe examples, no weight decay; accuracy
  the fraction correct; all arithmetic float32 (the model's compute dtype), host summaries
  float64.
- probe examples = the first `examples` training examples of the run's epoch-0 order
  (seed-dependent: runs with the same seed see the same examples), without augmentation for
  in-memory datasets and CIFAR-style augmentation.
- BatchNorm in 'eval' mode (running statistics) unless `bn_mode='train'` (the probe batch's
  statistics, running statistics untouched); the signal probe always uses training mode, as
  the training loop's probes do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.tree_utils as otu
import orbax.checkpoint as ocp
from absl import logging

from resjax import (
    checkpoint,
    config_lib,
    construct,
    data,
    landscape,
    models,
    optim,
    plots,
    steps,
    xla,
)
from resjax.probes import blocks, curvature, hessian, signals

PyTree = Any
_NO_OPT = optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))


class InspectError(ValueError):
    """Bad input for inspection; the message is one line naming what was looked for."""


def _option(default: Any, doc: str, choices: tuple[str, ...] = ()) -> Any:
    return dataclasses.field(default=default, metadata={'help': doc, 'choices': choices})


@dataclasses.dataclass(frozen=True)
class Options:
    """Every knob of the probes. scripts/inspect_checkpoint.py makes one flag of each field, with
    its default, its `help` and (an enum) its `choices`. Units in the README."""

    examples: int = _option(256, 'Probe examples K (first K training examples).')
    batch: int = _option(128, 'Examples per forward / HVP call.')
    bn_mode: str = _option('eval', 'BatchNorm mode of loss probes.', ('eval', 'train'))
    seed: int = _option(0, 'Seed of directions, Lanczos and Hutchinson draws.')
    top_k: int = _option(3, 'hessian: number of top eigenvalues.')
    lanczos_order: int = _option(40, 'hessian/spectrum: Lanczos steps (HVPs).')
    trace_samples: int = _option(20, 'hessian: Hutchinson samples.')
    slq_draws: int = _option(3, 'spectrum: SLQ start vectors.')
    grid: int = _option(21, 'Landscape points per axis / interpolation points.')
    range: float = _option(1.0, 'Landscape coefficients in [-range, range].')
    chunk: int = _option(8, 'Grid points per vmapped call.')
    direction: str = _option('random', 'Landscape axes.', ('random', 'eigen', 'gradient'))
    biasbn: str = _option('zero', 'Random directions on 1-D leaves.', landscape.BIASBN)
    alpha_min: float = _option(-0.5, 'interpolate: first alpha.')
    alpha_max: float = _option(1.5, 'interpolate: last alpha.')
    to: str | None = _option(None, 'interpolate: start from this workdir (default: the init).')
    eval_examples: int = _option(0, 'eval: examples per split (0 = all).')
    shatter_points: int = _option(64, 'shattering: inputs per line.')
    shatter_radius: float = _option(2.0, 'shattering: half-length of each line.')


@dataclasses.dataclass
class Run:
    """A restored checkpoint and everything needed to evaluate it."""

    workdir: str
    label: str
    step: int
    config: ml_collections.ConfigDict
    model: Any
    tx: Any
    dataset: data.Dataset
    state: steps.TrainState

    def initial_state(self) -> steps.TrainState:
        """The exact step-0 state of this run (same model, optimizer, image shape and seed;
        for a `train.init_from` run, the constructed start it saved). Raises InspectError (one
        line) if that start cannot be had."""
        try:
            return construct.initial_state(
                self.config, self.model, self.tx, self.dataset.image_shape, self.workdir
            )
        except ValueError as e:
            raise InspectError(f'{self.workdir!r}: {e}') from None


# ---------------------------------------------------------------------------------------------
# Loading.


def _merge(base: ml_collections.ConfigDict, saved: dict) -> None:
    for k, v in saved.items():
        if isinstance(v, dict) and k in base and isinstance(base[k], ml_collections.ConfigDict):
            _merge(base[k], v)
        elif k in base and isinstance(base[k], tuple) and isinstance(v, list):
            base[k] = tuple(v)
        else:
            base[k] = v


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's resolved config (config.json) over resjax's defaults (tuples restored)."""
    if not os.path.isdir(workdir):
        raise InspectError(f'workdir {workdir!r} does not exist')
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise InspectError(f'{workdir!r} is not a resjax run: no config.json (looked for {path})')
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise InspectError(f'cannot read {path}: {e}') from None
    config = config_lib.default_config()
    _merge(config, saved)
    return config


def _check_shapes(step_dir: str, abstract: PyTree, workdir: str, step: int) -> None:
    # Compare before restoring, so a checkpoint of another model is refused in one line.
    try:
        tree = ocp.StandardCheckpointer().metadata(step_dir).item_metadata.tree
    except Exception:  # noqa: BLE001 (orbax raises many kinds)
        return  # Damaged or gone: the restore that follows says which, in one line.
    saved = {
        '/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    wanted = {
        '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }
    for name, shape in wanted.items():
        if name not in saved:
            raise InspectError(
                f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
                f'{name} is missing from the checkpoint'
            )
        if saved[name] != shape:
            raise InspectError(
                f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
                f'{name} has shape {saved[name]} in the checkpoint, {shape} in the model'
            )
    extra = sorted(set(saved) - set(wanted))
    if extra:
        raise InspectError(
            f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
            f'the checkpoint has {extra[0]} (and {len(extra) - 1} more) the model lacks'
        )


def load_run(workdir: str, step: int | None = None, batch: int = 128) -> Run:
    """Restores `workdir`'s checkpoint at `step` (default: the latest) without writing anything.

    Raises InspectError (one line) for a missing workdir, a directory that is not a resjax run
    (no config.json or no checkpoints), a missing step (the message lists the saved ones), a
    checkpoint whose shapes differ from the model its config.json describes, and a damaged one.
    The step is read from a private hard-linked snapshot (`checkpoint.held_step`), so a live
    run may delete it meanwhile; a latest step deleted before it is held is replaced by the new
    latest. `batch` sets the dataset's train and eval batch sizes (per process).
    """
    config = load_config(workdir)
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(ckpt_dir):
        raise InspectError(
            f'{workdir!r} is not a resjax run: no checkpoints (looked for {ckpt_dir})'
        )
    cfg = config.copy_and_resolve_references()
    cfg.train.batch_size = batch
    cfg.train.eval_batch_size = batch
    if cfg.dataset.augment == 'cifar':
        cfg.dataset.augment = 'none'  # Probe the examples, not random crops of them.
    try:
        dataset = data.create_dataset(cfg)
        model = models.create_model(config.model, dataset.num_classes)
        tx = optim.create_optimizer(config.train)
    except ValueError as e:
        raise InspectError(f'{workdir!r}: {e}') from None
    init = functools.partial(steps.create_train_state, model, tx, dataset.image_shape, config.seed)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(init)
    )
    latest = step is None
    # A live run deletes old steps as it saves new ones, and a checkpoint every few steps lives
    # for less time than a restore takes: the step is read from a private hard-linked snapshot,
    # and a latest step that vanishes before it is held is replaced by the new latest.
    for _ in range(5):
        try:
            with contextlib.closing(checkpoint.checkpoint_manager(workdir, read_only=True)) as m:
                saved = m.all_steps()
        except FileNotFoundError:  # orbax stats each step it lists: one vanished meanwhile.
            continue
        if not saved:
            raise InspectError(f'{workdir!r} has no finished checkpoint in {ckpt_dir}')
        step = saved[-1] if latest else step
        if step not in saved:
            raise InspectError(f'step {step} not found in {ckpt_dir}; saved steps: {list(saved)}')
        try:
            state = _read_step(workdir, step, abstract)
            break
        except checkpoint.CheckpointError as e:
            raise InspectError(str(e)) from None  # Damaged, or another model's.
        except FileNotFoundError:
            if not latest:
                raise InspectError(
                    f'step {step} of {workdir!r} disappeared while reading (training keeps '
                    'only the last checkpoints); pick a newer --step'
                ) from None
    else:
        raise InspectError(
            f'the checkpoints of {workdir!r} were deleted faster than they could be read '
            f'(5 tries); raise train.checkpoint_every_steps or pass --step'
        )
    return Run(workdir, plots.run_label(workdir), step, config, model, tx, dataset, state)


def _read_step(workdir: str, step: int, abstract: PyTree) -> steps.TrainState:
    """Restores checkpoint `step` from a snapshot held for the read (FileNotFoundError if the
    step vanished first)."""
    with checkpoint.held_step(workdir, step) as held:
        manager = checkpoint.checkpoint_manager(held, read_only=True)
        try:
            step_dir = os.path.join(held, 'checkpoints', str(step))
            _check_shapes(os.path.join(step_dir, 'default'), abstract, workdir, step)
            return checkpoint.restore(manager, abstract, step)
        except checkpoint.CheckpointError as e:  # Name the run's checkpoint, not the snapshot.
            message = str(e).replace(held, os.path.abspath(workdir))
            raise checkpoint.CheckpointError(message) from None
        finally:
            manager.close()


def load_runs(workdirs: list[str], step: int | None = None, batch: int = 128) -> list[Run]:
    """`load_run` for each workdir; labels made unique (the workdir's name is appended)."""
    runs = [load_run(w, step, batch) for w in workdirs]
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f'{r.label} ({os.path.basename(os.path.normpath(r.workdir))})'
    if len({r.label for r in runs}) < len(runs):  # The same workdir twice: number them.
        for i, r in enumerate(runs):
            r.label = f'{r.label} #{i + 1}'
    return runs


# ---------------------------------------------------------------------------------------------
# Examples.


def train_examples(run: Run, num: int) -> dict[str, np.ndarray]:
    """The first `num` training examples of the run's epoch-0 order (all of them if `num` is 0
    or exceeds the training set), as {'image', 'label'} arrays."""
    num = run.dataset.num_train if num <= 0 else min(num, run.dataset.num_train)
    images, labels, have = [], [], 0
    for b in run.dataset.train_batches(0):
        images.append(b['image'])
        labels.append(b['label'])
        have += len(b['label'])
        if have >= num:
            break
    return {'image': np.concatenate(images)[:num], 'label': np.concatenate(labels)[:num]}


def to_batches(examples: dict[str, np.ndarray], batch: int) -> list[dict[str, jax.Array]]:
    """Splits examples into batches of exactly `batch` (the last padded with zeros, `mask` 0),
    so one compile serves every batch."""
    n = len(examples['label'])
    out = []
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch)
        mask = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        image = examples['image'][idx] * mask.reshape(-1, *[1] * (examples['image'].ndim - 1))
        out.append(
            {
                'image': jnp.asarray(image),
                'label': jnp.asarray(examples['label'][idx]),
                'mask': jnp.asarray(mask),
            }
        )
    return out


def probe_batches(run: Run, opts: Options) -> list[dict[str, jax.Array]]:
    """The probe examples of `opts` in batches; refuses BN train mode with a padded batch
    (padding would enter the batch statistics)."""
    ex = train_examples(run, opts.examples)
    n = len(ex['label'])
    if opts.bn_mode == 'train' and n % min(opts.batch, n):
        raise InspectError(f'--bn_mode=train needs --examples ({n}) divisible by --batch')
    return to_batches(ex, min(opts.batch, n))


def point(state: steps.TrainState) -> dict:
    """The variables of `state` as a landscape point: {'params', 'batch_stats'}."""
    return {'params': state.params, 'batch_stats': state.batch_stats}


# ---------------------------------------------------------------------------------------------
# Output helpers.


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in label).strip('_')


class _Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 2)


# ---------------------------------------------------------------------------------------------
# summary


def parameter_table(params: PyTree) -> list[dict]:
    """One row per layer in forward order: name, leaf shapes, parameter count, L2 norm of the
    layer's parameters (all leaves) and of its kernel (if any)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    rows: dict[str, dict] = {}
    for path, leaf in sorted(flat.items()):
        layer, name = path.rsplit('/', 1)
        row = rows.setdefault(layer, {'layer': layer, 'shapes': {}, 'count': 0, 'sq': 0.0})
        leaf = np.asarray(leaf, np.float64)
        row['shapes'][name] = list(leaf.shape)
        row['count'] += leaf.size
        row['sq'] += float(np.sum(leaf**2))
        if name == 'kernel':
            row['kernel_norm'] = float(np.sqrt(np.sum(leaf**2)))
    out = []
    for row in rows.values():
        row['norm'] = math.sqrt(row.pop('sq'))
        out.append(row)
    return out


def summary_numbers(run: Run, opts: Options) -> dict:
    """Config, step and parameter table (`parameter_table`) of the checkpoint."""
    del opts
    table = parameter_table(jax.device_get(run.state.params))
    return {
        'workdir': run.workdir,
        'step': run.step,
        'config': json.loads(run.config.to_json_best_effort()),
        'num_params': sum(r['count'] for r in table),
        'layers': table,
    }


def _summary_text(label: str, r: dict) -> str:
    lines = [
        f'\n== {label}: {r["workdir"]} step {r["step"]}, {r["num_params"]:,} parameters',
        f'{"layer":<34} {"shapes":<42} {"count":>9} {"||W||":>9}',
    ]
    for row in r['layers']:
        shapes = ' '.join(f'{k}{tuple(v)}' for k, v in row['shapes'].items())
        lines.append(f'{row["layer"]:<34} {shapes:<42} {row["count"]:>9,} {row["norm"]:>9.4f}')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# eval


def evaluate(run: Run, batches: list[dict], bn_mode: str = 'eval') -> dict[str, float]:
    """Mean loss (nats) and accuracy of the run's checkpoint over every unmasked example."""
    values = landscape.evaluate_points(
        _point_loss(run.model, bn_mode), point(run.state), [], np.zeros((1, 0)), batches, chunk=1
    )
    return {k: float(v[0]) for k, v in values.items()}


@functools.cache
def _point_loss(model: Any, bn_mode: str) -> Callable[[dict, dict], dict[str, jax.Array]]:
    """`loss(point, batch) -> {'loss', 'accuracy'}`: the mean cross-entropy (nats) and the
    fraction correct over the unmasked examples of `batch` at the variables `point`
    ({'params', 'batch_stats'}), BN in `bn_mode` (running statistics never updated): the loss
    of the landscape probes. One function per (model, BN mode), so eval, lesion and the
    landscapes share their compiles."""
    if bn_mode not in hessian.BN_MODES:
        raise ValueError(f'bn_mode={bn_mode!r} is unknown; use one of {hessian.BN_MODES}')

    def loss(point, batch):
        logits = hessian.probe_logits(model, point, batch, bn_mode)
        mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
        correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
        return {
            'loss': jnp.sum(steps.cross_entropy(logits, batch['label']) * mask) / jnp.sum(mask),
            'accuracy': jnp.sum(correct * mask) / jnp.sum(mask),
        }

    return loss


def test_batches(run: Run, limit: int = 0) -> list[dict]:
    """The run's eval split (every example once, padded batches with masks)."""
    out, have = [], 0
    for b in run.dataset.eval_batches():
        out.append({k: jnp.asarray(v) for k, v in b.items()})
        have += int(b['mask'].sum())
        if limit and have >= limit:
            break
    return out


def eval_numbers(run: Run, opts: Options) -> dict:
    """Train and test mean loss and accuracy with BN in eval mode (running statistics). Train =
    the first `eval_examples` training examples (0 = all), test = the eval split (as many)."""
    train = evaluate(run, to_batches(train_examples(run, opts.eval_examples), opts.batch), 'eval')
    test = evaluate(run, test_batches(run, opts.eval_examples), 'eval')
    return {
        'step': run.step,
        'bn_mode': 'eval',
        'train/loss': train['loss'],
        'train/accuracy': train['accuracy'],
        'test/loss': test['loss'],
        'test/accuracy': test['accuracy'],
    }


def _eval_text(label: str, r: dict) -> str:
    return (
        f'{label} step {r["step"]}: train loss {r["train/loss"]:.4f} acc '
        f'{r["train/accuracy"]:.4f} | test loss {r["test/loss"]:.4f} acc {r["test/accuracy"]:.4f}'
    )


# ---------------------------------------------------------------------------------------------
# hessian, spectrum


def hessian_of(run: Run, batches: list[dict], bn_mode: str) -> curvature.Hessian:
    """The Hessian of the mean loss over every unmasked example of `batches` at the checkpoint
    (`curvature.Hessian`: flat HVPs, batches weighted by example count)."""
    loss = hessian.probe_loss(run.model, bn_mode)
    return curvature.Hessian(loss, run.state.params, batches, state=run.state.batch_stats)


def hessian_numbers(run: Run, opts: Options) -> dict:
    """Top-k eigenvalues and lambda_min (Lanczos with full reorthogonalisation) and the
    Hutchinson trace +- standard error of the Hessian of the mean loss over the probe examples.

    Residuals are ||H y - theta y|| measured with one more HVP per reported Ritz pair.
    """
    batches = probe_batches(run, opts)
    h = hessian_of(run, batches, opts.bn_mode)
    key = jax.random.PRNGKey(opts.seed)
    t = _Timer()
    top = curvature.top_eigenpairs(
        h.hvp, h.random(key), opts.lanczos_order, opts.top_k, progress=f'{run.label} hessian'
    )
    lanczos_s = t()
    n = opts.trace_samples
    trace = stderr = None
    if n:
        trace, stderr, _ = curvature.hutchinson_trace(
            h.hvp, h.dim, jax.random.fold_in(key, 1), n, h.dtype, f'{run.label} hessian'
        )
    theta = top['ritz_values']
    return {
        'top_eigenvalues': top['eigenvalues'].tolist(),
        'top_residuals': top['residuals'].tolist(),
        'lambda_max': float(theta.max()),
        'lambda_min': top['lambda_min'],
        'lambda_min_residual': top['lambda_min_residual'],
        'abs_ratio_min_max': float(abs(theta.min()) / theta.max()),
        'trace': trace,
        'trace_stderr': stderr if n > 1 else None,
        'trace_samples': n,
        'lanczos_order': len(theta),
        'num_hvps': h.num_hvps,
        'lanczos_seconds': lanczos_s,
        'trace_seconds': round(t() - lanczos_s, 2),
        'ritz_values': theta.tolist(),
        'step': run.step,
        'bn_mode': opts.bn_mode,
        'examples': int(sum(float(b['mask'].sum()) for b in batches)),
    }


def _hessian_text(label: str, r: dict) -> str:
    return (
        f'{label}: lambda_max {r["lambda_max"]:.4g} lambda_min {r["lambda_min"]:.4g} |min/max| '
        f'{r["abs_ratio_min_max"]:.3g} top {np.round(r["top_eigenvalues"], 4).tolist()} trace '
        f'{r["trace"]:.4g} +- {r["trace_stderr"] or float("nan"):.2g}'
    )


def spectrum_numbers(run: Run, opts: Options) -> dict:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (`slq_draws` draws of order
    `lanczos_order`), Gaussian-smoothed as PyHessian does: `grid`, `density`, and each draw's
    Ritz values and weights."""
    h = hessian_of(run, probe_batches(run, opts), opts.bn_mode)
    ritz, weights = curvature.slq(
        h.hvp, h.dim, jax.random.PRNGKey(opts.seed + 2), opts.lanczos_order,
        opts.slq_draws, h.dtype, run.label,
    )  # fmt: skip
    grid, density = curvature.spectral_density(ritz, weights)
    return {
        'step': run.step,
        'bn_mode': opts.bn_mode,
        'draws': opts.slq_draws,
        'order': ritz.shape[1],
        'ritz_min': float(ritz.min()),
        'ritz_max': float(ritz.max()),
        'trace_estimate': float(np.mean(np.sum(weights * ritz, 1)) * h.dim),
        'grid': grid,
        'density': density,
        'ritz': ritz,
        'weights': weights,
    }


# ---------------------------------------------------------------------------------------------
# landscape1d, landscape2d


def landscape_directions(run: Run, opts: Options, num: int) -> tuple[list[dict], dict]:
    """`num` point-shaped directions of kind `opts.direction` and a description of them.

    - 'random': independent filter-normalised Gaussians (seeds opts.seed, opts.seed + 1), 1-D
      leaves zeroed or included per `opts.biasbn` (Li et al. 2018);
    - 'eigen': the top-`num` Hessian eigenvectors (Lanczos Ritz vectors of the probe loss),
      each scaled to the parameters' L2 norm;
    - 'gradient': the gradient of the probe loss (and, for 2-D, the top eigenvector), each
      scaled to the parameters' L2 norm.
    So coefficient 1 moves the weights by as much as their own norm (filter-wise for 'random').
    """
    params, stats = run.state.params, run.state.batch_stats
    info = {'kind': opts.direction, 'seed': opts.seed, 'biasbn': opts.biasbn}
    if opts.direction == 'random':
        key = lambda i: jax.random.PRNGKey(opts.seed + i)
        dirs = [landscape.random_direction(key(i), params, opts.biasbn) for i in range(num)]
    elif opts.direction in ('eigen', 'gradient'):
        h = hessian_of(run, probe_batches(run, opts), opts.bn_mode)
        norm = float(otu.tree_norm(params))
        dirs = []
        if opts.direction == 'gradient':
            dirs.append(landscape.gradient_direction(h))
            info['gradient_norm'] = float(otu.tree_norm(dirs[0]))
        if len(dirs) < num:
            eigen, top = landscape.eigen_directions(
                h, num - len(dirs), jax.random.PRNGKey(opts.seed), opts.lanczos_order,
                progress=f'{run.label} eigen directions',
            )  # fmt: skip
            dirs += eigen
            info['eigenvalues'] = top['eigenvalues'].tolist()
        dirs = [landscape.scale_to_norm(d, norm) for d in dirs[:num]]
        info['scaled_to_norm'] = norm
    else:
        raise InspectError(f'--direction={opts.direction!r}; use random, eigen or gradient')
    # The running statistics stay fixed along every direction.
    zero_stats = jax.tree.map(jnp.zeros_like, stats)
    return [{'params': d, 'batch_stats': zero_stats} for d in dirs], info


def landscape_1d(run: Run, opts: Options, directions: list[dict] | None = None) -> dict:
    """Loss and accuracy at theta + a d for `opts.grid` values of a in [-range, range]."""
    batches = probe_batches(run, opts)
    if directions is None:
        directions, info = landscape_directions(run, opts, 1)
    else:
        info = {'kind': 'given'}
    coeffs = np.linspace(-opts.range, opts.range, opts.grid)
    values = landscape.slice_1d(
        _point_loss(run.model, opts.bn_mode), point(run.state), directions[0], coeffs, batches,
        chunk=opts.chunk, progress=f'{run.label} 1-D landscape',
    )  # fmt: skip
    return {'alphas': coeffs, **values, 'directions': info}


def landscape1d_numbers(run: Run, opts: Options) -> dict:
    """`landscape_1d`'s curves and their summary (loss at 0, min and max)."""
    r = landscape_1d(run, opts)
    return {
        'step': run.step,
        'loss_at_0': float(np.interp(0.0, r['alphas'], r['loss'])),
        'loss_min': float(r['loss'].min()),
        'loss_max': float(r['loss'].max()),
        'directions': r['directions'],
        **{k: r[k] for k in ('alphas', 'loss', 'accuracy')},
    }


def landscape_2d(run: Run, opts: Options) -> dict:
    """Loss and accuracy at theta + a d1 + b d2 on an `opts.grid` x `opts.grid` grid over
    [-range, range]^2, plus `landscape.convexity_summary` of the loss grid."""
    batches = probe_batches(run, opts)
    directions, info = landscape_directions(run, opts, 2)
    xs = np.linspace(-opts.range, opts.range, opts.grid)
    values = landscape.slice_2d(
        _point_loss(run.model, opts.bn_mode), point(run.state), directions, xs, xs, batches,
        chunk=opts.chunk, progress=f'{run.label} 2-D landscape',
    )  # fmt: skip
    loss = values['loss']
    return {
        'xs': xs,
        'ys': xs,
        'loss': loss,
        'accuracy': values['accuracy'],
        'directions': info,
        'convexity': landscape.convexity_summary(loss, xs, xs),
        'convexity_r_half': landscape.convexity_summary(loss, xs, xs, radius=opts.range / 2),
    }


def landscape2d_numbers(run: Run, opts: Options) -> dict:
    """`landscape_2d`'s grids and their summary (loss at 0, min, max, convexity)."""
    r = landscape_2d(run, opts)
    return {
        'step': run.step,
        'loss_at_0': float(r['loss'][opts.grid // 2, opts.grid // 2]),
        'loss_min': float(r['loss'].min()),
        'loss_max': float(r['loss'].max()),
        'convexity': r['convexity'],
        'convexity_r_half': r['convexity_r_half'],
        'directions': r['directions'],
        **{k: r[k] for k in ('xs', 'ys', 'loss', 'accuracy')},
    }


# ---------------------------------------------------------------------------------------------
# interpolate


_INIT_FNS: dict = {}


def initial_variables(run: Run) -> steps.TrainState:
    """The run's exact step-0 params and BN statistics (`steps.create_train_state` without the
    optimizer), compiled once per (model, image shape) with XLA's fast-compile options."""
    if run.config.train.init_from:
        state = run.initial_state()
        return state.replace(opt_state=())
    key = (run.model, run.dataset.image_shape)
    seed = jnp.int32(run.config.seed)
    if key not in _INIT_FNS:

        def init(seed):
            state = steps.create_train_state(run.model, _NO_OPT, run.dataset.image_shape, seed)
            return state.replace(opt_state=())

        _INIT_FNS[key] = jax.jit(init).lower(seed).compile(xla.FAST_COMPILE)
    return _INIT_FNS[key](seed)


def interpolation(run: Run, opts: Options, other: Run | None = None) -> dict:
    """Loss and accuracy at (1 - a) start + a end for `opts.grid` values of a in
    [alpha_min, alpha_max] (Goodfellow et al. 2015). start = the run's exact initial state
    (or `other`'s checkpoint), end = the checkpoint. Parameters AND BN running statistics
    are interpolated, so a = 0 and a = 1 are exactly the two endpoints' (eval-mode) losses."""
    batches = probe_batches(run, opts)
    end = point(run.state)
    if other is None:
        start = point(initial_variables(run))
        start_name = 'init (step 0, re-created from the seed)'
    else:
        start = point(other.state)
        start_name = f'{other.workdir} step {other.step}'
    alphas = np.linspace(opts.alpha_min, opts.alpha_max, opts.grid)
    alphas = np.union1d(alphas, [0.0, 1.0])  # The endpoints are always on the grid.
    values = landscape.interpolation(
        _point_loss(run.model, opts.bn_mode), start, end, alphas, batches,
        chunk=opts.chunk, progress=f'{run.label} interpolation',
    )  # fmt: skip
    return {'alphas': alphas, **values, 'start': start_name}


def _interpolate_start(runs: list[Run], opts: Options) -> dict:
    """The `--to` run every checkpoint is interpolated from (None: each one's init), loaded
    once and checked to hold the same model."""
    other = load_run(opts.to, None, opts.batch) if opts.to else None
    for run in runs:
        if other is None:
            continue
        if other.config.model.to_dict() != run.config.model.to_dict():
            raise InspectError(f'--to {opts.to!r} holds another model than {run.workdir!r}')
        shapes = [jax.tree.map(jnp.shape, r.state.params) for r in (other, run)]
        if shapes[0] != shapes[1]:
            raise InspectError(
                f'--to {opts.to!r} has other parameter shapes than {run.workdir!r} (another '
                'number of classes or image channels?); interpolate between runs of one task'
            )
    return {'other': other}


def interpolate_numbers(run: Run, opts: Options, other: Run | None = None) -> dict:
    """`interpolation`'s curves and their summary: the endpoint losses, the largest bump over
    the chord between them and whether the loss falls monotonically on [0, 1]."""
    r = interpolation(run, opts, other)
    alphas, loss = r['alphas'], r['loss']
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1)))
    inside = (alphas >= 0) & (alphas <= 1)
    chord = loss[i0] + alphas[inside] * (loss[i1] - loss[i0])
    return {
        'step': run.step,
        'start': r['start'],
        'loss_start': float(loss[i0]),
        'loss_end': float(loss[i1]),
        'max_bump_over_chord': float(np.max(loss[inside] - chord)),
        'monotone_decreasing_on_0_1': bool(np.all(np.diff(loss[inside]) <= 1e-6)),
        **{k: r[k] for k in ('alphas', 'loss', 'accuracy')},
    }


# ---------------------------------------------------------------------------------------------
# lesion


def residual_blocks(run: Run) -> list[dict]:
    """The blocks whose residual branch a lesion can remove (none for plain nets), in forward
    order, each with its shortcut kind: 'identity', 'identity_pad' (option A: subsample and
    zero-pad, parameter-free) or 'projection' (a 1x1 conv shortcut, kept)."""
    return [
        {'block': b.name, 'shortcut': b.shortcut, 'last_conv': b.layers[-1].rsplit('/', 1)[-1]}
        for b in models.model_layout(run.config.model).residual_blocks()
    ]


def lesion_params(run: Run, block: str) -> PyTree:
    """The run's parameters with `block`'s residual branch removed, its shortcut kept
    (`resjax.models.layout.lesion`: exact for every block of resjax's models)."""
    layout = models.model_layout(run.config.model)
    if block not in {b.name for b in layout.residual_blocks()}:
        raise InspectError(f'{block!r} is not a residual block of {run.workdir!r}')
    return models.layout.lesion(layout, run.state.params, block)


def lesion_numbers(run: Run, opts: Options) -> dict:
    """Test error and loss (BN eval mode, the whole eval split) of the intact net and with each
    residual block's residual branch removed in turn (Veit et al. 2016)."""
    del opts
    batches = test_batches(run)
    base = evaluate(run, batches)
    blocks = residual_blocks(run)
    rows = []
    for i, b in enumerate(blocks):
        lesioned = dataclasses.replace(
            run, state=run.state.replace(params=lesion_params(run, b['block']))
        )
        e = evaluate(lesioned, batches)
        rows.append({**b, 'test_error': 1 - e['accuracy'], 'test_loss': e['loss']})
        logging.info('%s lesion %d/%d: %s error %.4f', run.label, i + 1, len(blocks),
                     b['block'], 1 - e['accuracy'])  # fmt: skip
    return {
        'step': run.step,
        'bn_mode': 'eval',
        'test_error_intact': 1 - base['accuracy'],
        'test_loss_intact': base['loss'],
        'blocks': rows,
        'note': None if blocks else 'plain network: no residual blocks to remove',
    }


def _lesion_text(label: str, r: dict) -> str | None:
    return None if r['blocks'] else f'{label}: plain network, no residual blocks to remove'


# ---------------------------------------------------------------------------------------------
# shattering


def gradient_correlation(run: Run, opts: Options) -> dict:
    """Correlation of input gradients along lines in input space (after Balduzzi et al. 2017).

    For each of E = min(examples, 64) probe images x_e, a random unit direction u_e in input
    space and T = `shatter_points` inputs x_e + t u_e, t evenly spaced in [-R, R]
    (R = `shatter_radius`, input units: the dataset's standardised pixels, L2). g_e(t) is the
    gradient w.r.t. the input of the logit of x_e's label (BN eval mode). C(k) = mean over e
    and t of cos(g_e(t), g_e(t + k)) at lag k (distance k * 2R / (T - 1)); shattered gradients
    decorrelate (C falls to ~0) within a short distance. Returns C(k) as `correlation` against
    `distance`, `lag1_correlation` = C(1) at `lag1_distance`, and the first distance where C < 0.5
    (`half_correlation_distance`, None if it never falls that far).
    """
    ex = train_examples(run, min(opts.examples, 64))
    images = jnp.asarray(ex['image'])
    labels = jnp.asarray(ex['label'])
    e = len(labels)
    key = jax.random.PRNGKey(opts.seed + 3)
    u = jax.random.normal(key, images.shape)
    u = u / jnp.sqrt(jnp.sum(u**2, axis=tuple(range(1, u.ndim)), keepdims=True))
    ts = jnp.linspace(-opts.shatter_radius, opts.shatter_radius, opts.shatter_points)
    variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}

    @jax.jit
    def input_grads(x, y):
        # Eval-mode BN: examples are independent, so the gradient of the sum is per example.
        def total(x):
            logits = run.model.apply(variables, x, train=False)
            return jnp.sum(jnp.take_along_axis(logits, y[:, None], 1))

        return jax.grad(total)(x)

    grads = []
    for i in range(e):
        x = images[i][None] + ts.reshape(-1, *[1] * (images.ndim - 1)) * u[i][None]
        grads.append(input_grads(x, jnp.full((len(ts),), labels[i])).reshape(len(ts), -1))
    g = np.asarray(jnp.stack(grads), np.float64)  # [E, T, D]
    g /= np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-30)
    lags = np.arange(1, opts.shatter_points)
    corr = np.array([np.mean(np.sum(g[:, k:] * g[:, :-k], -1)) for k in lags])
    spacing = 2 * opts.shatter_radius / (opts.shatter_points - 1)
    below = np.flatnonzero(corr < 0.5)
    return {
        'step': run.step,
        'lag1_correlation': float(corr[0]),
        'lag1_distance': spacing,
        'half_correlation_distance': float(lags[below[0]] * spacing) if len(below) else None,
        'examples': e,
        'distance': lags * spacing,
        'correlation': corr,
    }


# ---------------------------------------------------------------------------------------------
# signals


def signal_metrics(run: Run, batch: dict) -> dict[str, float]:
    """The training loop's per-layer signal probes on this checkpoint and one batch, BN in
    training mode (running statistics not kept): `grad_norm/`, `param_norm/`, `act_*`,
    `relu_zero/`, `gsc/`, `grad_norm/global`, `probe/loss` (update ratios need an update and
    are absent)."""

    @xla.jit
    def run_probe(params, batch_stats, batch):
        loss, _, new_vars, grads, act_grads = steps.loss_and_grads(
            run.model, params, batch_stats, batch, probes=True
        )
        out = signals.weight_signals(params, grads)
        out.update(
            signals.activation_signals(
                new_vars['intermediates'], act_grads, run.model.preactivation
            )
        )
        out['grad_norm/global'] = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(grads)))
        out['probe/loss'] = loss
        return out

    out = run_probe(run.state.params, run.state.batch_stats, batch)
    return {k: float(v) for k, v in jax.device_get(out).items()}


def signals_numbers(run: Run, opts: Options) -> dict[str, float]:
    """`signal_metrics` on the checkpoint's first `batch` probe examples (one unpadded batch)."""
    ex = train_examples(run, min(opts.batch, opts.examples or opts.batch))
    return signal_metrics(
        run, {'image': jnp.asarray(ex['image']), 'label': jnp.asarray(ex['label'])}
    )


def _signals_text(label: str, r: dict) -> str:
    return (
        f'{label}: grad norm first/last conv {signals.first_last_ratio(r):.3g}, loss '
        f'{r["probe/loss"]:.4f}'
    )


# ---------------------------------------------------------------------------------------------
# blocks


def block_numbers(run: Run, batch: dict, bn_mode: str = 'eval') -> dict[str, Any]:
    """The block probes (`resjax.probes.blocks`) of this checkpoint on one batch: every
    `branch_ratio/`, `block_change/`, `cka/` and `init_distance/` value (from the run's step-0
    parameters, a constructed run's included) and the all-blocks CKA matrix (`cka_names`,
    `cka_matrix`). BN in `bn_mode` ('train': this batch's statistics, running ones untouched)."""
    variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
    mutable = ['intermediates'] + (['batch_stats'] if bn_mode == 'train' else [])
    _, new_vars = run.model.apply(
        variables, batch['image'], train=bn_mode == 'train', mutable=mutable
    )
    inter = new_vars['intermediates']
    out = {k: float(v) for k, v in jax.device_get(blocks.block_signals(inter)).items()}
    initial = initial_variables(run).params
    moved = blocks.init_distance(run.state.params, initial)
    out.update({k: float(v) for k, v in jax.device_get(moved).items()})
    names, matrix = blocks.cka_matrix(inter)
    out['cka_names'] = names
    out['cka_matrix'] = np.asarray(matrix, np.float64).tolist()
    return out


def blocks_numbers(run: Run, opts: Options) -> dict[str, Any]:
    """`block_numbers` on the checkpoint's first `examples` probe examples as one batch, BN in
    `bn_mode`."""
    ex = train_examples(run, opts.examples)
    batch = {'image': jnp.asarray(ex['image']), 'label': jnp.asarray(ex['label'])}
    return {
        'step': run.step,
        'bn_mode': opts.bn_mode,
        'examples': len(ex['label']),
        **block_numbers(run, batch, opts.bn_mode),
    }


def _blocks_text(label: str, r: dict) -> str:
    return (
        f'{label}: median block change {np.median(signals.profile(r, "block_change")[1]):.3g}, '
        f'median consecutive CKA {np.median(signals.profile(r, "cka")[1]):.3g}, distance from '
        f'init {r["init_distance/global"]:.3g}'
    )


# ---------------------------------------------------------------------------------------------
# Registry.


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe, as `run_probe` runs it.

    `compute(run, opts, **setup(runs, opts))` returns one checkpoint's numbers (floats, lists,
    numpy arrays; no figure, no file); `draw({label: numbers with 'step'}, opts)` returns the
    figure, or {path under out_dir: (figure, its numbers)} for several.
    """

    compute: Callable[..., dict]
    draw: Callable[[dict[str, dict], Options], Any] | None = None
    arrays: tuple[str, ...] = ()  # keys written to <name>.npz as '<label>/<key>', not to JSON
    settings: bool = False  # <name>.json = {'settings': opts, 'runs': ...}; also in the npz
    timed: bool = False  # each run's numbers end with 'seconds', its compute time
    text: Callable[[str, dict], str | None] | None = None  # printed after each run
    setup: Callable[[list[Run], Options], dict] | None = None


_CURVE = ('alphas', 'loss', 'accuracy')
PROBES: dict[str, Probe] = {
    'summary': Probe(summary_numbers, text=_summary_text),
    'eval': Probe(eval_numbers, timed=True, text=_eval_text),
    'hessian': Probe(hessian_numbers, text=_hessian_text),
    'spectrum': Probe(
        spectrum_numbers, plots.draw_spectrum, arrays=('grid', 'density', 'ritz', 'weights')
    ),
    'landscape1d': Probe(
        landscape1d_numbers, plots.draw_landscape1d, _CURVE, settings=True, timed=True
    ),
    'landscape2d': Probe(
        landscape2d_numbers,
        plots.draw_landscape2d,
        ('xs', 'ys', 'loss', 'accuracy'),
        settings=True,
        timed=True,
    ),
    'interpolate': Probe(
        interpolate_numbers,
        plots.draw_interpolate,
        _CURVE,
        settings=True,
        timed=True,
        setup=_interpolate_start,
    ),
    'lesion': Probe(lesion_numbers, plots.draw_lesion, timed=True, text=_lesion_text),
    'shattering': Probe(
        gradient_correlation,
        plots.draw_shattering,
        ('distance', 'correlation'),
        settings=True,
        timed=True,
    ),
    'signals': Probe(signals_numbers, plots.draw_signals, text=_signals_text),
    'blocks': Probe(blocks_numbers, plots.draw_blocks, text=_blocks_text),
}


def run_probe(name: str, runs: list[Run], out_dir: str, opts: Options) -> dict:
    """Computes probe `name` on each run, draws its figure and writes `<name>.png` beside its
    numbers (`<name>.json`, and `<name>.npz` for arrays); returns {run label: JSON numbers}."""
    probe = PROBES[name]
    extra = probe.setup(runs, opts) if probe.setup else {}
    numbers = {}
    for run in runs:
        t = _Timer()
        r = numbers[run.label] = probe.compute(run, opts, **extra)
        if probe.timed:
            r['seconds'] = t()
        if line := probe.text and probe.text(run.label, r):
            print(line)
    result = {
        label: {k: v for k, v in r.items() if k not in probe.arrays} for label, r in numbers.items()
    }
    settings = {'settings': dataclasses.asdict(opts)} if probe.settings else {}
    if probe.arrays:
        arrays = {f'{_safe(label)}/{k}': r[k] for label, r in numbers.items() for k in probe.arrays}
        npz_settings = {k: json.dumps(v) for k, v in settings.items()}
        np.savez(os.path.join(out_dir, f'{name}.npz'), **npz_settings, **arrays)
    document = {**settings, 'runs': result} if settings else result
    figure = None
    if probe.draw:
        figure = probe.draw({r.label: {'step': r.step, **numbers[r.label]} for r in runs}, opts)
    if isinstance(figure, dict):  # Several figures, each with its own numbers.
        for path, (fig, figure_numbers) in figure.items():
            folder, base = os.path.split(os.path.join(out_dir, path))
            plots.save_figure(fig, folder, base, figure_numbers)
        figure = None
    if figure is None:
        plots.write_json(os.path.join(out_dir, f'{name}.json'), document)
    else:
        plots.save_figure(figure, out_dir, name, document)
    return result


def validate(probes: list[str], opts: Options) -> None:
    """Raises InspectError (one line) for unknown probes or impossible options."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise InspectError(f'unknown probe(s) {unknown}; use some of {list(PROBES)}')
    for field in dataclasses.fields(Options):
        value, choices = getattr(opts, field.name), field.metadata['choices']
        if choices and value not in choices:
            raise InspectError(f'--{field.name}={value!r}; use one of {choices}')
    for name in (
        'examples', 'batch', 'grid', 'chunk', 'lanczos_order', 'slq_draws', 'top_k',
        'trace_samples', 'range', 'shatter_radius',
    ):  # fmt: skip
        if getattr(opts, name) <= 0:
            raise InspectError(f'--{name}={getattr(opts, name)} must be positive')
    if opts.eval_examples < 0:
        raise InspectError(f'--eval_examples={opts.eval_examples} must be 0 (all) or positive')
    if opts.grid < 3 and any(p.startswith('landscape') or p == 'interpolate' for p in probes):
        raise InspectError(f'--grid={opts.grid} must be at least 3')
    if opts.alpha_min >= opts.alpha_max:
        raise InspectError(
            f'--alpha_min={opts.alpha_min} must be below --alpha_max={opts.alpha_max}'
        )
    if opts.shatter_points < 2:
        raise InspectError('--shatter_points must be at least 2')
    if opts.to and not os.path.isdir(opts.to):
        raise InspectError(f'--to workdir {opts.to!r} does not exist')


def inspect(
    workdirs: list[str], probes: list[str], out_dir: str, opts: Options, step: int | None = None
) -> dict:
    """Loads every workdir (read-only) and runs `probes` in order; returns {probe: numbers}
    with each probe's wall time in seconds under `timings` (also in `timings.json`)."""
    validate(probes, opts)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InspectError(f'--out {out_dir!r} is a file; give a directory')
    runs = load_runs(workdirs, step, opts.batch)
    os.makedirs(out_dir, exist_ok=True)
    results, timings = {}, {}
    for name in probes:
        t = _Timer()
        logging.info('probe %s ...', name)
        results[name] = run_probe(name, runs, out_dir, opts)
        timings[name] = t()
        logging.info('probe %s done in %.1f s', name, timings[name])
    results['timings'] = timings
    plots.write_json(os.path.join(out_dir, 'timings.json'), timings)
    return results
