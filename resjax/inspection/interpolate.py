"""interpolate: the loss on the line from the initialisation (or another run) to the checkpoint."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from resjax import landscape, objective, runs
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.inspection.landscape1d import loss_and_accuracy_figure


def interpolation(run: runs.Run, opts: Opts, other: runs.Run | None = None) -> dict:
    """Loss and accuracy at (1 - a) start + a end for `opts.grid` values of a in
    [alpha_min, alpha_max] (Goodfellow et al. 2015). start = the run's exact initial state
    (or `other`'s checkpoint), end = the checkpoint. Parameters AND BN running statistics
    are interpolated, so a = 0 and a = 1 are exactly the two endpoints' (eval-mode) losses;
    with `opts.bn_stats='recompute'` the BN statistics at every point are instead recomputed
    on the first `opts.bn_examples` training examples (`objective.recomputed_batch_stats`, BN
    in eval mode with them), so each point is scored as the function its parameters compute."""
    batches = common.probe_batches(run, opts)
    end = common.point(run.state)
    if other is None:
        start = common.point(common.initial_variables(run))
        start_name = 'init (step 0, re-created from the seed)'
    else:
        start = common.point(other.state)
        start_name = f'{other.workdir} step {other.step}'
    alphas = np.linspace(opts.alpha_min, opts.alpha_max, opts.grid)
    alphas = np.union1d(alphas, [0.0, 1.0])  # The endpoints are always on the grid.
    loss_fn, state = objective.loss_and_accuracy(run.model, opts.bn_mode), None
    if opts.bn_stats == 'recompute':
        loss_fn = objective.loss_and_accuracy_recomputed(run.model)
        state = jnp.asarray(runs.train_examples(run, opts.bn_examples)['image'])
    values = landscape.interpolation(
        loss_fn, start, end, alphas, batches, chunk=opts.chunk, state=state,
        progress=f'{run.label} interpolation',
    )  # fmt: skip
    return {'alphas': alphas, **values, 'start': start_name}


def interpolate_start(targets: list[runs.Run], opts: Opts) -> dict:
    """The `--to` run every checkpoint is interpolated from (None: each one's init), loaded
    once and checked to hold the same model."""
    other = runs.load_run(opts.to, None, opts.batch) if opts.to else None
    for run in targets:
        if other is None:
            continue
        if other.config.model.to_dict() != run.config.model.to_dict():
            raise common.InspectError(f'--to {opts.to!r} holds another model than {run.workdir!r}')
        shapes = [jax.tree.map(jnp.shape, r.state.params) for r in (other, run)]
        if shapes[0] != shapes[1]:
            raise common.InspectError(
                f'--to {opts.to!r} has other parameter shapes than {run.workdir!r} (another '
                'number of classes or image channels?); interpolate between runs of one task'
            )
    return {'other': other}


def barrier(alphas: np.ndarray, values: np.ndarray) -> float:
    """max over the grid's a in [0, 1] of values(a) - ((1 - a) values(0) + a values(1)): the
    barrier of a path (Frankle et al. 2020), in `values`' units; 0 when the path lies on or
    below its chord at every grid point (the endpoints themselves give 0)."""
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1)))
    inside = (alphas >= 0) & (alphas <= 1)
    chord = values[i0] + alphas[inside] * (values[i1] - values[i0])
    return float(np.max(values[inside] - chord))


def interpolate_numbers(run: runs.Run, opts: Opts, other: runs.Run | None = None) -> dict:
    """`interpolation`'s curves and their summary: the endpoint losses and errors, the loss
    barrier (`max_bump_over_chord`, nats) and the error barrier (fraction of the probe
    examples), both `barrier` on [0, 1], and whether the loss falls monotonically there."""
    r = interpolation(run, opts, other)
    alphas, loss, error = r['alphas'], r['loss'], 1 - r['accuracy']
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1)))
    inside = (alphas >= 0) & (alphas <= 1)
    return {
        'step': run.step,
        'start': r['start'],
        'bn_stats': opts.bn_stats,
        'loss_start': float(loss[i0]),
        'loss_end': float(loss[i1]),
        'error_start': float(error[i0]),
        'error_end': float(error[i1]),
        'max_bump_over_chord': barrier(alphas, loss),
        'error_barrier': barrier(alphas, error),
        'monotone_decreasing_on_0_1': bool(np.all(np.diff(loss[inside]) <= 1e-6)),
        **{k: r[k] for k in ('alphas', 'loss', 'accuracy')},
    }


def draw_interpolate(runs: dict, opts: Opts) -> Figure:
    """Loss and accuracy along the line from the start (0) to each checkpoint (1)."""
    bn = f'{opts.bn_mode} mode'
    if opts.bn_stats == 'recompute':
        bn = f'eval mode, statistics recomputed on {opts.bn_examples} training examples'
    title = f'Linear interpolation from {opts.to or "initialisation"}, BN {bn}'
    return loss_and_accuracy_figure(runs, 'alpha (0 = start, 1 = checkpoint)', title, marks=(0, 1))


def check(opts: Opts, probes: list[str]) -> None:
    """Refuses an empty alpha range and a `--to` workdir that does not exist."""
    if opts.alpha_min >= opts.alpha_max:
        raise common.InspectError(
            f'--alpha_min={opts.alpha_min} must be below --alpha_max={opts.alpha_max}'
        )
    if opts.bn_stats == 'recompute' and opts.bn_mode != 'eval':
        raise common.InspectError(
            '--bn_stats=recompute scores each point in BN eval mode; use --bn_mode=eval'
        )
    if opts.to and not os.path.isdir(opts.to):
        raise common.InspectError(f'--to workdir {opts.to!r} does not exist')


PROBE = common.Probe(
    interpolate_numbers,
    draw_interpolate,
    ('alphas', 'loss', 'accuracy'),
    settings=True,
    timed=True,
    setup=interpolate_start,
    options={
        'alpha_min': common.Option(float, -0.5, 'interpolate: first alpha.'),
        'alpha_max': common.Option(float, 1.5, 'interpolate: last alpha.'),
        'to': common.Option(
            str | None, None, 'interpolate: start from this workdir (default: the init).'
        ),
        'bn_stats': common.Option(
            str,
            'interpolate',
            'interpolate: BN statistics at each point: interpolated with the parameters, or '
            'recomputed on --bn_examples training examples (then BN eval mode).',
            ('interpolate', 'recompute'),
        ),
        'bn_examples': common.Option(
            int,
            256,
            'interpolate: training examples (the first N) the BN statistics are recomputed on, '
            'in one forward pass.',
            positive=True,
        ),
    },
    check=check,
)
