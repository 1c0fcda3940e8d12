"""`train_and_evaluate(config, workdir)`: the one training loop, its periodic work the hooks of
`resjax.hooks`. Read it top to bottom."""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from resjax import checkpoint, construct, data, hooks, models, optim, parallel, steps, xla
from resjax import workdir as workdir_lib
from resjax.metrics import MetricWriter
from resjax.probes import hessian, signals

# Config keys whose change makes an existing workdir's checkpoints meaningless for this run:
# the model families' architecture keys (resjax.models; model.dtype, model.weight_grad and
# model.scan_blocks change how a model computes, not what it is) and the dataset's.
RESUME_CRITICAL = (
    *models.resume_critical_keys(),
    'dataset.name',
    'dataset.image_shape',
    'dataset.num_classes',
)


class ConfigError(ValueError):
    """A config or workdir that cannot run; the message is one line naming the fix."""


class NonFiniteError(RuntimeError):
    """Training stopped because a loss or gradient was not finite (exit code 3)."""


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    """Checks everything that can be checked before building or compiling anything. A
    constructed run (`train.init_from`) whose `workdir` holds its saved start needs no source."""
    try:
        models.validate_model_config(config.model)
        optim.learning_rate_schedule(config.train)
        optim.create_optimizer(config.train)
        parallel.check_batch_sizes(config.train.batch_size, config.train.eval_batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.dataset.name not in data.DATASETS:
        raise ConfigError(
            f'dataset.name={config.dataset.name!r} is unknown; use one of {data.DATASETS}'
        )
    if config.train.on_nonfinite not in ('stop', 'skip'):
        raise ConfigError(f'train.on_nonfinite={config.train.on_nonfinite!r}; use stop or skip')
    if config.probes.hessian_batch not in ('current', 'fixed'):
        raise ConfigError(
            f'probes.hessian_batch={config.probes.hessian_batch!r}; use current or fixed'
        )
    if config.probes.bn_mode not in hessian.BN_MODES:
        raise ConfigError(
            f'probes.bn_mode={config.probes.bn_mode!r}; use one of {hessian.BN_MODES}'
        )
    if config.parallel.mode not in parallel.MODES:
        raise ConfigError(f'parallel.mode={config.parallel.mode!r}; use one of {parallel.MODES}')
    for key in (
        'batch_size',
        'eval_batch_size',
        'log_every_steps',
        'eval_every_steps',
        'checkpoint_every_steps',
        'keep_checkpoints',
    ):
        if config.train[key] <= 0:
            raise ConfigError(f'train.{key}={config.train[key]} must be positive')
    for key in (
        'every_steps',
        'hessian_every_steps',
        'init_angle_every_steps',
        'hessian_trace_samples',
    ):
        if config.probes[key] < 0:
            raise ConfigError(f'probes.{key}={config.probes[key]} must be 0 (off) or positive')
    if config.probes.hessian_every_steps and config.probes.hessian_iters <= 0:
        raise ConfigError(
            f'probes.hessian_iters={config.probes.hessian_iters} must be positive (the '
            'power-iteration HVPs of each curvature probe)'
        )
    if config.dataset.num_train_examples < 0:
        raise ConfigError(
            f'dataset.num_train_examples={config.dataset.num_train_examples} must be 0 (all) or '
            'positive'
        )
    if config.train.steps <= 0:
        raise ConfigError(f'train.steps={config.train.steps} must be positive')
    if not 0 <= config.seed < 2**31:
        raise ConfigError(f'seed={config.seed} must be an integer in [0, 2**31)')
    ds = config.data_seed
    if ds is not None and (isinstance(ds, bool) or not isinstance(ds, int) or not 0 <= ds < 2**31):
        raise ConfigError(f'data_seed={ds!r} must be None (= seed) or an integer in [0, 2**31)')
    started = workdir and os.path.isdir(os.path.join(workdir, construct.START_DIR))
    if config.train.init_from and not started:
        try:
            construct.check_source(config)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
    """Trains `config`'s model on its dataset, writing metrics and checkpoints to `workdir`.

    Resumes from the latest checkpoint in `workdir` if there is one. Raises ConfigError for a
    bad config or workdir, a workdir another run holds, or a damaged checkpoint (all before
    compiling and before anything in the workdir changes), ConfigError for a checkpoint that
    cannot be saved (the run stops at once; the saved ones are kept), and NonFiniteError if
    training diverged (`train.on_nonfinite='stop'`; the last good checkpoint is kept).
    """
    # ----- Config, workdir: checked, then held; written only once the run can start ---------
    validate_config(config, workdir)
    try:
        workdir_lib.check(config, workdir, RESUME_CRITICAL)
        with workdir_lib.lock(workdir):
            return _train_and_evaluate(config, workdir)
    except (workdir_lib.WorkdirError, checkpoint.SaveError) as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(_write_error(e, workdir)) from None


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
    """`train_and_evaluate` once the workdir is checked and held."""
    # ----- Input -------------------------------------------------------------------------------
    try:
        dataset = data.create_dataset(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    logging.info(
        'Dataset %s: %d train, %d eval examples of shape %s, %d classes',
        dataset.name,
        dataset.num_train,
        dataset.num_eval,
        dataset.image_shape,
        dataset.num_classes,
    )

    # ----- Model and optimizer ------------------------------------------------------------
    model = models.create_model(config.model, dataset.num_classes)
    schedule = optim.learning_rate_schedule(config.train)
    tx = optim.create_optimizer(config.train)
    init = functools.partial(steps.create_train_state, model, tx, dataset.image_shape, config.seed)

    # ----- Sharding: batch along 'data', state replicated ---------------------------------
    # Checkpoints, the sharpness probe and `state` outside the pmap steps use jit's layout:
    # global arrays replicated over the mesh. Under pmap the loop holds a per-device copy.
    pmap = config.parallel.mode == 'pmap'
    mesh = parallel.create_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init),
    )
    first_state = functools.partial(
        _first_state, config, workdir, init, model, tx, dataset, abstract_state, replicated
    )

    # ----- Checkpoint: resume or initialise -----------------------------------------------
    manager = checkpoint.checkpoint_manager(workdir, config.train.keep_checkpoints)
    built_from = None  # The source of a constructed start built (not restored) by this run.
    if manager.latest_step() is not None:
        try:
            state = checkpoint.restore(manager, abstract_state)
        except checkpoint.CheckpointError as e:
            manager.close()
            raise ConfigError(str(e)) from e
        logging.info('Resumed from step %d of %s', int(state.step), workdir)
    else:
        state, built_from = first_state()
    start_step, total = int(jax.device_get(state.step)), config.train.steps
    if start_step >= total:
        manager.close()
        logging.info(
            'Already complete: %s holds step %d of train.steps=%d; nothing to train (raise '
            'train.steps to continue)',
            workdir,
            start_step,
            total,
        )
        return state
    # The run starts: only now is the workdir changed.
    writer = MetricWriter(workdir, resume_step=start_step)
    workdir_lib.write_config(config, workdir)
    if built_from is not None and start_step == 0:
        construct.save_start(workdir, state, built_from)
    logging.info(
        'Model %s-%d%s: %d parameters',
        config.model.family,
        config.model.depth,
        '' if config.model.residual else ' (plain)',
        sum(x.size for x in jax.tree.leaves(state.params)),
    )

    # ----- Compiled steps -------------------------------------------------------------------
    train_step, probe_step, eval_step, put_batch = _compile_steps(
        config, model, tx, schedule, mesh, dataset.num_classes
    )
    if pmap:
        state = parallel.replicate(state)
    # Host values of replicated outputs: replica 0 of pmap's, jit's global arrays.
    host = functools.partial(jax.tree.map, parallel.first_replica) if pmap else jax.device_get
    # Replica 0 of a pmap-replicated tree in jit's layout (identity under jit).
    to_global = (
        functools.partial(parallel.unreplicate, sharding=replicated) if pmap else lambda t: t
    )

    # ----- Hooks: the periodic work, chosen by config (resjax/hooks) ----------------------
    @functools.cache
    def initial_params():
        # Once for every hook that reads them; called while the hooks are built, before the
        # first step donates the state's buffers.
        if start_step == 0:
            return jax.tree.map(jnp.copy, to_global(state.params))
        return first_state()[0].params

    timer = hooks.Throughput(start_step)
    ctx = hooks.Context(
        config=config, workdir=workdir, model=model, schedule=schedule, dataset=dataset,
        mesh=mesh, replicated=replicated, pmap=pmap, start_step=start_step, manager=manager,
        eval_step=eval_step, put_batch=put_batch, host=host, to_global=to_global,
        initial_params=initial_params,
        check_finite=functools.partial(_check_finite, config, workdir, host), timer=timer,
    )  # fmt: skip
    active = hooks.from_config(ctx, state)
    before, probes, after = ([h for h in active if h.when == w] for w in hooks.WHEN)

    # ----- Loop -------------------------------------------------------------------------------
    batches = dataset.train_batches(start_step)
    step, compiled = start_step, set()
    try:
        while step < total:
            batch = next(batches)
            step_data = hooks.StepData(batch, put_batch(batch))
            due = [h for h in before + probes if h.due(step)]
            probe_now = any(h.when == hooks.STEP for h in due)  # The probe variant of the step.
            kinds = {h.name for h in due} | ({'probe'} if probe_now else {'train'})
            compiles = not kinds <= compiled  # The first call of a compiled function: untimed.
            if compiles:
                jax.block_until_ready(state)
                timer.pause(step)
            done = []  # (hook, metrics) of the due BEFORE and STEP hooks.
            for hook in before:
                if hook in due:
                    done.append((hook, hook.run(state, step, step_data)))
                hook.observe(state, step, step_data)
            if probe_now:
                state, outputs = probe_step(state, step_data.device_batch)
            else:
                state, outputs = train_step(state, step_data.device_batch)
                outputs = {'train': outputs}
            step_data = dataclasses.replace(step_data, outputs=outputs)
            for hook in probes:
                if hook in due:
                    done.append((hook, hook.run(state, step, step_data)))
            for row in hooks.rows(done):
                writer.write(step, row)
            for hook in probes + after:
                hook.observe(state, step + 1, step_data)
            step += 1
            if compiles:
                jax.block_until_ready(outputs)
                logging.info(
                    'Step %d compiled %s (compile + run: %.1f s)',
                    step,
                    ' + '.join(sorted(kinds - compiled)),
                    timer.resume(step),
                )
                compiled |= kinds
            for hook in after:
                if hook.due(step):
                    if hook.untimed:
                        jax.block_until_ready(state)
                        timer.pause(step)
                    writer.write(step, hook.run(state, step, step_data))
                    if hook.untimed:
                        timer.resume(step)
            if any(hook.stop for hook in after):
                break
    finally:
        for hook in active:
            hook.close()
        writer.close()
        manager.close()
    return to_global(state)


def _first_state(
    config: ml_collections.ConfigDict,
    workdir: str,
    init: Callable[[], steps.TrainState],
    model: nn.Module,
    tx: optax.GradientTransformation,
    dataset: data.Dataset,
    abstract_state: steps.TrainState,
    replicated: jax.sharding.NamedSharding,
) -> tuple[steps.TrainState, dict | None]:
    """(step 0's state, the source it was built from or None), in jit's layout: the seed's
    random init, or the constructed solution (`train.init_from`): the one this run saved when
    it began, else built from the source's latest step."""
    if not config.train.init_from:
        return xla.run_once(init, out_shardings=replicated), None
    built_from = None
    try:
        state = construct.saved_start(workdir, abstract_state)
        if state is None:
            state, built_from = construct.build(config, model, tx, dataset.image_shape)
            logging.info(
                'train.init_from: built from step %d of %s%s',
                built_from['step'],
                built_from['workdir'],
                ' (still training: this run keeps that step)'
                if built_from['still_training']
                else '',
            )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return jax.device_put(state, replicated), built_from


def _compile_steps(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: jax.sharding.Mesh,
    num_classes: int,
) -> tuple[Callable, Callable, Callable, Callable]:
    """(train_step, probe_step, eval_step, put_batch): one step function, two wrappers, jit
    over the mesh or pmap (resjax/parallel.py). The probe variant also returns the per-layer
    probes, chosen by the loop when they are due: ordinary steps do not pay for them."""
    family_layout = models.FAMILIES[config.model.family].layout
    layout = family_layout and family_layout(config.model)  # The block probes' order.
    if config.parallel.mode == 'pmap':
        axis = parallel.DATA_AXIS
        # sync_bn: the model's BatchNorm averages its statistics over the pmap axis.
        step_model = models.create_model(
            config.model, num_classes, axis_name=axis if config.parallel.sync_bn else None
        )
        make_step = functools.partial(
            steps.make_train_step, step_model, tx, schedule, axis_name=axis, layout=layout
        )
        return (
            parallel.pmap_train_step(make_step()),
            parallel.pmap_train_step(make_step(probes=True)),
            parallel.pmap_eval_step(steps.make_eval_step(model)),
            parallel.split_batch,
        )
    make_step = functools.partial(steps.make_train_step, model, tx, schedule, layout=layout)
    return (
        xla.jit(make_step(), donate_argnums=0),
        xla.jit(make_step(probes=True), donate_argnums=0),
        xla.jit(steps.make_eval_step(model)),
        functools.partial(parallel.shard_batch, mesh=mesh),
    )


def _check_finite(
    config: ml_collections.ConfigDict, workdir: str, host: Callable, state: steps.TrainState
) -> None:
    """Raises NonFiniteError if a step's loss or gradient was not finite and
    `train.on_nonfinite='stop'`; the last good checkpoint is the last one saved."""
    bad = int(host(state.nonfinite_step))
    if bad >= 0 and config.train.on_nonfinite == 'stop':
        names = list(signals.group_by_layer(state.params))
        raise NonFiniteError(
            f'non-finite loss or gradient at step {bad} (first non-finite gradient in layer '
            f'{names[int(host(state.nonfinite_layer))]}); last good checkpoint kept in {workdir}'
        )


def _write_error(error: OSError, workdir: str) -> str:
    """One line for a file the run could not write or read in its workdir: a full or
    read-only disk, a workdir deleted under the run."""
    what = error.filename or workdir
    resume = 'rerun the same command to resume from the last saved step'
    if not os.path.isdir(workdir):
        return (
            f'workdir {workdir} disappeared while the run wrote {what}, its checkpoints with it; '
            'restore it to resume, or start again'
        )
    if error.errno == errno.ENOSPC:
        free = shutil.disk_usage(workdir).free
        return (
            f'no space left on the device writing {what} ({free / 2**10:.0f} KiB free in '
            f'{workdir}); free space and {resume}'
        )
    reason = error.strerror or error
    return f'cannot write {what} ({reason}); fix its permissions or mount and {resume}'
