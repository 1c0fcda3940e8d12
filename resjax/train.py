"""`train_and_evaluate(config, workdir)`: the one training loop. Read it top to bottom."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax.tree_utils as otu
from absl import logging

from resjax import checkpoint, construct, data, models, optim, parallel, steps, xla
from resjax import workdir as workdir_lib
from resjax.logs import format_seconds
from resjax.metrics import MetricWriter, mean_metrics
from resjax.probes import blocks, hessian, signals

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
    for key in ('every_steps', 'hessian_every_steps', 'hessian_trace_samples'):
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
    abstract_state = jax.eval_shape(init)

    built_from = None  # The source of a constructed start built (not restored) by this run.

    def first_state():
        """Step 0: the seed's random init, or the constructed solution (`train.init_from`):
        the one this run saved when it began, else built from the source's latest step."""
        nonlocal built_from
        if not config.train.init_from:
            return xla.run_once(init, out_shardings=replicated)
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
        return jax.device_put(state, replicated)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state
    )

    # ----- Checkpoint: resume or initialise -----------------------------------------------
    manager = checkpoint.checkpoint_manager(workdir, config.train.keep_checkpoints)
    if manager.latest_step() is not None:
        try:
            state = checkpoint.restore(manager, abstract_state)
        except checkpoint.CheckpointError as e:
            manager.close()
            raise ConfigError(str(e)) from e
        logging.info('Resumed from step %d of %s', int(state.step), workdir)
    else:
        state = first_state()
    start_step = int(jax.device_get(state.step))
    if start_step >= config.train.steps:
        manager.close()
        logging.info(
            'Already complete: %s holds step %d of train.steps=%d; nothing to train (raise '
            'train.steps to continue)',
            workdir,
            start_step,
            config.train.steps,
        )
        return state
    # The run starts: only now is the workdir changed.
    writer = MetricWriter(workdir, resume_step=start_step)
    workdir_lib.write_config(config, workdir)
    if built_from is not None and start_step == 0:
        construct.save_start(workdir, state, built_from)
    # Replica 0 of a pmap-replicated tree in jit's layout (identity under jit).
    to_global = (
        functools.partial(parallel.unreplicate, sharding=replicated) if pmap else lambda t: t
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        'Model %s-%d%s: %d parameters',
        config.model.family,
        config.model.depth,
        '' if config.model.residual else ' (plain)',
        num_params,
    )

    # ----- Compiled steps -------------------------------------------------------------------
    # Two compiled variants chosen by the loop: probes are not paid for on ordinary steps.
    # One step function, two wrappers: jit over the mesh, or pmap (resjax/parallel.py).
    if pmap:
        axis = parallel.DATA_AXIS
        # sync_bn: the model's BatchNorm averages its statistics over the pmap axis.
        step_model = models.create_model(
            config.model, dataset.num_classes, axis_name=axis if config.parallel.sync_bn else None
        )
        make_step = functools.partial(
            steps.make_train_step, step_model, tx, schedule, axis_name=axis
        )
        train_step = parallel.pmap_train_step(make_step())
        probe_step = parallel.pmap_train_step(make_step(probes=True))
        eval_step = parallel.pmap_eval_step(steps.make_eval_step(model))
        put_batch = parallel.split_batch
        state = parallel.replicate(state)
    else:
        make_step = functools.partial(steps.make_train_step, model, tx, schedule)
        train_step = xla.jit(make_step(), donate_argnums=0)
        probe_step = xla.jit(make_step(probes=True), donate_argnums=0)
        eval_step = xla.jit(steps.make_eval_step(model))
        put_batch = functools.partial(parallel.shard_batch, mesh=mesh)

    def host(tree):
        """Host values of replicated outputs: replica 0 of pmap's, jit's global arrays."""
        return jax.tree.map(parallel.first_replica, tree) if pmap else jax.device_get(tree)

    scalar = lambda x: int(host(x))
    probe_every = config.probes.every_steps
    hessian_every = config.probes.hessian_every_steps
    hessian_step = hessian.make_sharpness_probe(
        model,
        config.probes.hessian_iters,
        bn_mode=config.probes.bn_mode,
        trace_samples=config.probes.hessian_trace_samples,
    )
    # Warm-start vector of the sharpness probe; built only when the probe is on, compiled once
    # (eager tree_random_like compiles per leaf shape: seconds for nothing otherwise).
    # Under pmap the probe runs under jit on replica 0's parameters and the global batch, so
    # with bn_mode='train' and per-device BN it uses global-batch statistics (README).
    # Placed like the parameters: a single-device vector made every probe compile twice.
    hessian_vec = hessian_every and xla.run_once(
        otu.tree_random_like,
        jax.random.PRNGKey(config.seed + 1),
        to_global(state.params),
        out_shardings=replicated,
    )
    fixed_probe_batch = None
    # The `init_distance/` probes' reference: this run's step-0 parameters (recomputed on
    # resume; a copy, since the steps donate the state's buffers).
    initial_params = None
    if probe_every:
        initial_params = (
            jax.tree.map(jnp.copy, to_global(state.params))
            if start_step == 0
            else first_state().params
        )
    init_distance = jax.jit(blocks.init_distance)

    def evaluate(state):
        sums = None
        for batch in dataset.eval_batches():
            out = eval_step(state, put_batch(batch))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = host(sums)
        return {
            'eval/loss': sums['loss_sum'] / sums['count'],
            'eval/accuracy': sums['correct'] / sums['count'],
        }

    def check_finite(state):
        bad = scalar(state.nonfinite_step)
        if bad >= 0 and config.train.on_nonfinite == 'stop':
            names = list(signals.group_by_layer(state.params))
            raise NonFiniteError(
                f'non-finite loss or gradient at step {bad} (first non-finite gradient in layer '
                f'{names[scalar(state.nonfinite_layer)]}); last good checkpoint kept in {workdir}'
            )

    # ----- Loop -------------------------------------------------------------------------------
    total = config.train.steps
    train_rows, throughput, compiled = [], _Throughput(start_step), set()
    batches = dataset.train_batches(start_step)
    step = start_step
    previous_params = None
    saving = False  # A checkpoint save is under way in the background.
    preempted = _PreemptionFlag()
    try:
        while step < total:
            local_batch = next(batches)
            batch = put_batch(local_batch)
            probe_now = probe_every and step % probe_every == 0
            hessian_now = hessian_every and step % hessian_every == 0
            kinds = {'probe' if probe_now else 'train'} | ({'hessian'} if hessian_now else set())
            compiles = not kinds <= compiled  # The first call of a step compiles it: untimed.
            if compiles:
                jax.block_until_ready(state)
                throughput.pause(step)
            if hessian_now:
                if config.probes.hessian_batch == 'fixed':
                    # The batch of step 0, whatever step this run started at: comparable probes.
                    if fixed_probe_batch is None:
                        first = next(dataset.train_batches(0))
                        fixed_probe_batch = parallel.shard_batch(first, mesh)
                    probe_batch = fixed_probe_batch
                else:
                    probe_batch = parallel.shard_batch(local_batch, mesh) if pmap else batch
                params, batch_stats = to_global((state.params, state.batch_stats))
                update = None  # The last update, if its start point was kept (not on resume).
                if previous_params is not None:
                    update = jax.tree.map(jnp.subtract, params, previous_params)
                row, hessian_vec = hessian_step(
                    params,
                    batch_stats,
                    probe_batch,
                    hessian_vec,
                    key=jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                    update=update,
                )
                previous_params = None
                lr = float(schedule(step))
                if lr > 0:  # (0 during a linear warm-up's first step)
                    row['hessian/two_over_lr'] = 2.0 / lr
                writer.write(step, row)
            if hessian_every and (step + 1) % hessian_every == 0:
                # Keep the start point of this update for the next probe's update curvature
                # (a copy: the step donates the state's buffers).
                previous_params = jax.tree.map(jnp.copy, to_global(state.params))
            if probe_now:
                moved = jax.device_get(init_distance(to_global(state.params), initial_params))
                state, metrics = probe_step(state, batch)
                # Probes describe the parameters before this step's update: logged at `step`.
                writer.write(step, {**host(metrics['probes']), **moved})
                metrics = metrics['train']
            else:
                state, metrics = train_step(state, batch)
            if saving:
                # The save started after the previous step ends before this step's results are
                # used (it overlaps the step's device work): a failed save stops the run here.
                checkpoint.check_saved(manager)
                saving = False
            step += 1
            train_rows.append(metrics)
            if compiles:
                jax.block_until_ready(metrics)
                logging.info(
                    'Step %d compiled %s (compile + run: %.1f s)',
                    step,
                    ' + '.join(sorted(kinds - compiled)),
                    throughput.resume(step),
                )
                compiled |= kinds
            is_last = step == total
            if step % config.train.log_every_steps == 0 or is_last:
                row = mean_metrics(host(train_rows))
                rate = throughput.rate(step)
                if rate is not None:  # None when every step since the last row compiled.
                    row['steps_per_sec'] = rate
                train_rows = []
                check_finite(state)
                if config.train.on_nonfinite == 'skip':
                    row['train/skipped_steps'] = scalar(state.skipped_steps)
                writer.write(step, row)
                logging.info(
                    'step %d/%d | loss %.4f | acc %.3f | %s steps/s | ETA %s',
                    step,
                    total,
                    row['train/loss'],
                    row['train/accuracy'],
                    '-' if rate is None else f'{rate:.1f}',
                    throughput.eta(total - step),
                )
            if step % config.train.eval_every_steps == 0 or is_last:
                jax.block_until_ready(state)
                throughput.pause(step)  # Eval time is not training time.
                row = evaluate(state)
                writer.write(step, row)
                logging.info(
                    'step %d/%d | eval loss %.4f | eval acc %.4f',
                    step,
                    total,
                    row['eval/loss'],
                    row['eval/accuracy'],
                )
                throughput.resume(step)
            # SIGTERM here, or orbax's multi-host preemption sync point: save now and stop.
            stop = preempted.is_set() or manager.reached_preemption(step)
            if step % config.train.checkpoint_every_steps == 0 or is_last or stop:
                check_finite(state)
                checkpoint.save(manager, to_global(state))
                saving = True
            if stop and not is_last:
                logging.warning(
                    'Preempted: saved step %d in %s; rerun the same command to resume.',
                    step,
                    workdir,
                )
                break
        checkpoint.check_saved(manager)
    finally:
        preempted.restore()
        writer.close()
        manager.close()
    return to_global(state)


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


class _PreemptionFlag:
    """Records SIGTERM (what TPU VMs and most schedulers send before killing a job) instead
    of dying mid-step; the loop checks it once per step."""

    def __init__(self):
        self._set = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Throughput:
    """Steps/sec and ETA from timed steps only. The loop pauses the clock around what is not
    training (a step that compiles, evaluation) and resumes it after."""

    def __init__(self, step: int):
        self._step, self._time = step, time.perf_counter()  # Start of the running segment.
        self._steps, self._seconds = 0, 0.0  # Timed since the last `rate`.
        self._all_steps, self._all_seconds = 0, 0.0  # Timed in this run: the ETA's rate.
        self._paused_at = self._time

    def pause(self, step: int) -> None:
        """Ends the running segment at `step` (device work done: the caller synchronised)."""
        if self._time is not None:
            now = time.perf_counter()
            self._steps += step - self._step
            self._seconds += now - self._time
            self._time, self._paused_at = None, now

    def resume(self, step: int) -> float:
        """Starts a segment at `step`; returns the seconds spent paused."""
        now = time.perf_counter()
        paused = now - self._paused_at if self._time is None else 0.0
        self._step, self._time = step, now
        return paused

    def rate(self, step: int) -> float | None:
        """Steps/sec of the timed steps since the last call, or None if there were none."""
        self.pause(step)
        steps, seconds = self._steps, self._seconds
        self._all_steps += steps
        self._all_seconds += seconds
        self._steps, self._seconds = 0, 0.0
        self.resume(step)
        return steps / seconds if steps and seconds > 0 else None

    def eta(self, remaining_steps: int) -> str:
        """Time left at this run's timed rate ('?' before any step was timed)."""
        if not self._all_steps:
            return '?'
        return format_seconds(remaining_steps * self._all_seconds / self._all_steps)
