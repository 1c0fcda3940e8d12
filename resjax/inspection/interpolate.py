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
    are interpolated, so a = 0 and a = 1 are exactly the two endpoints' (eval-mode) losses."""
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
    values = landscape.interpolation(
        objective.loss_and_accuracy(run.model, opts.bn_mode), start, end, alphas, batches,
        chunk=opts.chunk, progress=f'{run.label} interpolation',
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


def interpolate_numbers(run: runs.Run, opts: Opts, other: runs.Run | None = None) -> dict:
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


def draw_interpolate(runs: dict, opts: Opts) -> Figure:
    """Loss and accuracy along the line from the start (0) to each checkpoint (1)."""
    title = f'Linear interpolation from {opts.to or "initialisation"}, BN {opts.bn_mode} mode'
    return loss_and_accuracy_figure(runs, 'alpha (0 = start, 1 = checkpoint)', title, marks=(0, 1))


def check(opts: Opts, probes: list[str]) -> None:
    """Refuses an empty alpha range and a `--to` workdir that does not exist."""
    if opts.alpha_min >= opts.alpha_max:
        raise common.InspectError(
            f'--alpha_min={opts.alpha_min} must be below --alpha_max={opts.alpha_max}'
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
    },
    check=check,
)
