"""landscape2d: the loss on a plane through the checkpoint, and its convexity."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from resjax import landscape, objective, runs
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.inspection.landscape1d import landscape_directions, landscape_settings


def landscape_2d(run: runs.Run, opts: Opts) -> dict:
    """Loss and accuracy at theta + a d1 + b d2 on an `opts.grid` x `opts.grid` grid over
    [-range, range]^2, plus `landscape.convexity_summary` of the loss grid."""
    batches = common.probe_batches(run, opts)
    directions, info = landscape_directions(run, opts, 2)
    xs = np.linspace(-opts.range, opts.range, opts.grid)
    values = landscape.slice_2d(
        objective.loss_and_accuracy(run.model, opts.bn_mode),
        common.point(run.state),
        directions,
        xs,
        xs,
        batches,
        chunk=opts.chunk,
        progress=f'{run.label} 2-D landscape',
    )
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


def landscape2d_numbers(run: runs.Run, opts: Opts) -> dict:
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


def draw_landscape2d(runs: dict, opts: Opts) -> Figure:
    """2-D loss contours, filled, with a colour bar of the loss per panel (one panel per run;
    levels up to 10 nats above the panel's minimum, higher loss in the top colour)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, (label, r) in zip(axes[0], runs.items()):
        loss = r['loss']
        levels = np.linspace(loss.min(), min(loss.max(), loss.min() + 10), 15)
        filled = ax.contourf(r['xs'], r['ys'], loss.T, levels=levels, cmap='viridis',
                             extend='max')  # fmt: skip
        ax.contour(r['xs'], r['ys'], loss.T, levels=levels, colors='k', linewidths=0.4)
        fig.colorbar(filled, ax=ax, label='mean cross-entropy (nats)', fraction=0.046, pad=0.03)
        ax.plot(0, 0, 'r+', ms=10, mew=2)
        ax.set_title(f'{label} (step {r["step"]})', fontsize=10)
        ax.set_xlabel('alpha (direction 1)')
        ax.set_ylabel('beta (direction 2)')
        ax.set_aspect('equal')
    title = '2-D loss landscape (mean cross-entropy; + = the checkpoint)\n'
    fig.suptitle(title + landscape_settings(opts), fontsize=8)
    fig.tight_layout()
    return fig


PROBE = common.Probe(
    landscape2d_numbers,
    draw_landscape2d,
    ('xs', 'ys', 'loss', 'accuracy'),
    settings=True,
    timed=True,
)
