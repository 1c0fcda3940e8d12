"""spectrum: the Hessian eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from resjax import plots, runs
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.probes import curvature


def spectrum_numbers(run: runs.Run, opts: Opts) -> dict:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (`slq_draws` draws of order
    `lanczos_order`), Gaussian-smoothed as PyHessian does: `grid`, `density`, and each draw's
    Ritz values and weights."""
    h = common.hessian_of(run, common.probe_batches(run, opts), opts.bn_mode)
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


def draw_spectrum(runs: dict, opts: Opts) -> Figure:
    """Hessian eigenvalue density (log), one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    peak = 0.0
    for color, (label, r) in zip(plots.colors(), runs.items()):
        ax.semilogy(r['grid'], r['density'] + 1e-12, color=color, label=label)
        peak = max(peak, float(np.max(r['density'])))
    if peak > 0:  # Six decades below the peak: the 1e-12 floor would otherwise take the axis.
        ax.set_ylim(peak * 1e-6, peak * 3)
    ax.set_xlabel('eigenvalue of the Hessian of the mean loss')
    ax.set_ylabel('density (log)')
    ax.set_title(f'Hessian eigenvalue density (SLQ), BN {opts.bn_mode} mode')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


PROBE = common.Probe(
    spectrum_numbers,
    draw_spectrum,
    arrays=('grid', 'density', 'ritz', 'weights'),
    options={'slq_draws': common.Option(int, 3, 'spectrum: SLQ start vectors.', positive=True)},
)
