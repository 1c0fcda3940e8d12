"""Read-only run loading: a workdir's config, its checkpoint and its examples.

`load_run(workdir, step)` restores a run without writing anything to it (orbax's read-only
manager, only finalised steps, each read from a private hard-linked snapshot so that a live
run may delete it meanwhile). `resjax.construct` reads a constructed run's source with it, and
`resjax.inspection` every run it inspects. Bad input raises `RunError`, one line naming what
was looked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from resjax import checkpoint, config_lib, data, models, optim, steps

PyTree = Any


class RunError(ValueError):
    """A workdir or checkpoint that cannot be read as asked; the message is one line naming
    what was looked for."""


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


def run_label(workdir: str) -> str:
    """A short label from a workdir's config (its model family's, e.g. 'plain-56 (no BN)'),
    or the workdir's name."""
    try:
        with open(os.path.join(workdir, 'config.json')) as f:
            return models.run_label(json.load(f)['model'])
    except (OSError, KeyError, ValueError):
        return os.path.basename(os.path.normpath(workdir))


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
        raise RunError(f'workdir {workdir!r} does not exist')
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise RunError(f'{workdir!r} is not a resjax run: no config.json (looked for {path})')
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f'cannot read {path}: {e}') from None
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
            raise RunError(
                f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
                f'{name} is missing from the checkpoint'
            )
        if saved[name] != shape:
            raise RunError(
                f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
                f'{name} has shape {saved[name]} in the checkpoint, {shape} in the model'
            )
    extra = sorted(set(saved) - set(wanted))
    if extra:
        raise RunError(
            f'checkpoint step {step} of {workdir!r} does not match its config.json model: '
            f'the checkpoint has {extra[0]} (and {len(extra) - 1} more) the model lacks'
        )


def load_run(workdir: str, step: int | None = None, batch: int = 128) -> Run:
    """Restores `workdir`'s checkpoint at `step` (default: the latest) without writing anything.

    Raises RunError (one line) for a missing workdir, a directory that is not a resjax run
    (no config.json or no checkpoints), a missing step (the message lists the saved ones), a
    checkpoint whose shapes differ from the model its config.json describes, and a damaged one.
    The step is read from a private hard-linked snapshot (`checkpoint.held_step`), so a live
    run may delete it meanwhile; a latest step deleted before it is held is replaced by the new
    latest. `batch` sets the dataset's train and eval batch sizes (per process).
    """
    config = load_config(workdir)
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(ckpt_dir):
        raise RunError(f'{workdir!r} is not a resjax run: no checkpoints (looked for {ckpt_dir})')
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
        raise RunError(f'{workdir!r}: {e}') from None
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
            raise RunError(f'{workdir!r} has no finished checkpoint in {ckpt_dir}')
        step = saved[-1] if latest else step
        if step not in saved:
            raise RunError(f'step {step} not found in {ckpt_dir}; saved steps: {list(saved)}')
        try:
            state = _read_step(workdir, step, abstract)
            break
        except checkpoint.CheckpointError as e:
            raise RunError(str(e)) from None  # Damaged, or another model's.
        except FileNotFoundError:
            if not latest:
                raise RunError(
                    f'step {step} of {workdir!r} disappeared while reading (training keeps '
                    'only the last checkpoints); pick a newer --step'
                ) from None
    else:
        raise RunError(
            f'the checkpoints of {workdir!r} were deleted faster than they could be read '
            f'(5 tries); raise train.checkpoint_every_steps or pass --step'
        )
    return Run(workdir, run_label(workdir), step, config, model, tx, dataset, state)


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
    return dataset_examples(run.dataset, num)


def dataset_examples(
    dataset: data.Dataset, num: int, split: str = 'train'
) -> dict[str, np.ndarray]:
    """The first `num` examples of `split`: 'train' in the epoch-0 order, 'test' in order and
    without padding (all of them if `num` is 0 or exceeds the split), as {'image', 'label'}."""
    total = dataset.num_train if split == 'train' else dataset.num_eval
    num = total if num <= 0 else min(num, total)
    batches = dataset.train_batches(0) if split == 'train' else dataset.eval_batches()
    images, labels, have = [], [], 0
    for b in batches:
        keep = b['mask'].astype(bool) if 'mask' in b else slice(None)
        images.append(np.asarray(b['image'])[keep])
        labels.append(np.asarray(b['label'])[keep])
        have += len(labels[-1])
        if have >= num:
            break
    return {'image': np.concatenate(images)[:num], 'label': np.concatenate(labels)[:num]}


def test_batches(run: Run, limit: int = 0) -> list[dict]:
    """The run's eval split (every example once, padded batches with masks)."""
    out, have = [], 0
    for b in run.dataset.eval_batches():
        out.append({k: jnp.asarray(v) for k, v in b.items()})
        have += int(b['mask'].sum())
        if limit and have >= limit:
            break
    return out


def to_batches(examples: dict[str, np.ndarray], batch: int) -> list[dict[str, jax.Array]]:
    """Splits examples into batches of exactly `batch` (`data.padded_batches`: the last padded
    with zeros, `mask` 0), so one compile serves every batch."""
    batches = data.padded_batches(examples['image'], examples['label'], batch, 0, 1)
    return [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]
