"""shattering: the correlation of input gradients along lines in input space (Balduzzi et al.
2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from resjax import plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts


def gradient_correlation(run: runs.Run, opts: Opts) -> dict:
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
    ex = runs.train_examples(run, min(opts.examples, 64))
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


def draw_shattering(runs: dict, opts: Opts) -> Figure:
    """Input-gradient correlation against distance along input lines, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, r) in zip(plots.colors(), runs.items()):
        ax.plot(r['distance'], r['correlation'], color=color, marker='.', label=label)
    ax.axhline(0, color='k', lw=0.5)
    ax.set_xlabel('distance between inputs along a random line (L2, input units)')
    ax.set_ylabel('mean cosine of input gradients')
    ax.set_title('Gradient correlation along input lines (Balduzzi et al. 2017), BN eval mode')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def check(opts: Opts, probes: list[str]) -> None:
    """Refuses fewer than 2 points per line."""
    if opts.shatter_points < 2:
        raise common.InspectError('--shatter_points must be at least 2')


PROBE = common.Probe(
    gradient_correlation,
    draw_shattering,
    ('distance', 'correlation'),
    settings=True,
    timed=True,
    options={
        'shatter_points': common.Option(int, 64, 'shattering: inputs per line.'),
        'shatter_radius': common.Option(
            float, 2.0, 'shattering: half-length of each line.', positive=True
        ),
    },
    check=check,
)
