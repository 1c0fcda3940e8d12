"""hessian: top eigenvalues, lambda_min and trace of the probe loss's Hessian."""

from __future__ import annotations

import jax
import numpy as np

from resjax import runs
from resjax.inspection import common
from resjax.inspection.common import Opts
from resjax.probes import curvature


def hessian_numbers(run: runs.Run, opts: Opts) -> dict:
    """Top-k eigenvalues and lambda_min (Lanczos with full reorthogonalisation) and the
    Hutchinson trace +- standard error of the Hessian of the mean loss over the probe examples.

    Residuals are ||H y - theta y|| measured with one more HVP per reported Ritz pair.
    """
    batches = common.probe_batches(run, opts)
    h = common.hessian_of(run, batches, opts.bn_mode)
    key = jax.random.PRNGKey(opts.seed)
    t = common.Timer()
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


PROBE = common.Probe(
    hessian_numbers,
    text=_hessian_text,
    options={
        'top_k': common.Option(int, 3, 'hessian: number of top eigenvalues.', positive=True),
        'lanczos_order': common.Option(
            int, 40, 'hessian/spectrum: Lanczos steps (HVPs).', positive=True
        ),
        'trace_samples': common.Option(int, 20, 'hessian: Hutchinson samples.', positive=True),
    },
)
