"""landscape1d: the loss along one direction from the checkpoint (Li et al. 2018), and the
landscape options and directions that landscape2d and interpolate share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax.tree_utils as otu
from matplotlib.figure import Figure

from resjax import landscape, objective, plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts

DIRECTIONS = ('random', 'eigen', 'gradient')


def landscape_directions(run: runs.Run, opts: Opts, num: int) -> tuple[list[dict], dict]:
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
        h = common.hessian_of(run, common.probe_batches(run, opts), opts.bn_mode)
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
        raise common.InspectError(f'--direction={opts.direction!r}; use random, eigen or gradient')
    # The running statistics stay fixed along every direction.
    zero_stats = jax.tree.map(jnp.zeros_like, stats)
    return [{'params': d, 'batch_stats': zero_stats} for d in dirs], info


def landscape_1d(run: runs.Run, opts: Opts, directions: list[dict] | None = None) -> dict:
    """Loss and accuracy at theta + a d for `opts.grid` values of a in [-range, range]."""
    batches = common.probe_batches(run, opts)
    if directions is None:
        directions, info = landscape_directions(run, opts, 1)
    else:
        info = {'kind': 'given'}
    coeffs = np.linspace(-opts.range, opts.range, opts.grid)
    values = landscape.slice_1d(
        objective.loss_and_accuracy(run.model, opts.bn_mode),
        common.point(run.state),
        directions[0],
        coeffs,
        batches,
        chunk=opts.chunk,
        progress=f'{run.label} 1-D landscape',
    )
    return {'alphas': coeffs, **values, 'directions': info}


def landscape1d_numbers(run: runs.Run, opts: Opts) -> dict:
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


def landscape_settings(opts: Opts) -> str:
    """The settings of a landscape figure, for its title."""
    return (
        f'{opts.direction} directions, BN {opts.bn_mode} mode, {opts.examples} train examples,'
        f' biases/BN {opts.biasbn}, seed {opts.seed}'
    )


def loss_and_accuracy_figure(runs: dict, xlabel: str, title: str, marks: tuple = ()) -> Figure:
    """Loss (log scale) and accuracy against `alphas`, one line per run; vertical lines at
    `marks`."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, (label, r) in zip(plots.colors(), runs.items()):
        ax.plot(r['alphas'], r['loss'], color=color, label=label)
        ax2.plot(r['alphas'], r['accuracy'], color=color, label=label)
    for a, ylabel in ((ax, 'mean cross-entropy (nats)'), (ax2, 'accuracy')):
        for x in marks:
            a.axvline(x, color='k', lw=0.5)
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    ax.set_yscale('log')
    fig.suptitle(title, fontsize=9)
    return fig


def draw_landscape1d(runs: dict, opts: Opts) -> Figure:
    """1-D loss and accuracy curves along one direction."""
    title = f'1-D loss landscape, {landscape_settings(opts)}'
    return loss_and_accuracy_figure(runs, f'alpha ({opts.direction} direction)', title)


def check(opts: Opts, probes: list[str]) -> None:
    """Refuses fewer than 3 grid points for a landscape or an interpolation."""
    if opts.grid < 3 and any(p.startswith('landscape') or p == 'interpolate' for p in probes):
        raise common.InspectError(f'--grid={opts.grid} must be at least 3')


PROBE = common.Probe(
    landscape1d_numbers,
    draw_landscape1d,
    ('alphas', 'loss', 'accuracy'),
    settings=True,
    timed=True,
    options={
        'grid': common.Option(
            int, 21, 'Landscape points per axis / interpolation points.', positive=True
        ),
        'range': common.Option(
            float, 1.0, 'Landscape coefficients in [-range, range].', positive=True
        ),
        'chunk': common.Option(int, 8, 'Grid points per vmapped call.', positive=True),
        'direction': common.Option(str, 'random', 'Landscape axes.', DIRECTIONS),
        'biasbn': common.Option(str, 'zero', 'Random directions on 1-D leaves.', landscape.BIASBN),
    },
    check=check,
)
