"""The loss whose curvature resjax probes, and the sharpness probe the train loop runs.

The probed loss is `resjax.objective.mean_loss`: the MEAN cross-entropy over the probe examples,
without weight decay, BatchNorm in one of two modes (`probes.bn_mode`):

- 'train': batch statistics of the probe batch, running statistics left untouched
  (init2winit's choice; the loss the optimizer actually descends);
- 'eval': running statistics (PyHessian's and loss-landscape's choice; a fixed function of
  the parameters, so the Hessian is that of the deployed network).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax.tree_utils as otu

from resjax import objective
from resjax.probes import curvature

PyTree = Any
BN_MODES = objective.BN_MODES


@functools.cache
def probe_loss(model: nn.Module, bn_mode: str = 'train') -> Callable[..., jax.Array]:
    """`loss(params, batch, batch_stats)`: `objective.mean_loss` (the mean cross-entropy over
    `batch`, weighted by `batch['mask']` if present), in the form `curvature.Hessian` takes
    (`state=batch_stats`). `bn_mode` as in the module docstring; in neither mode does the probe
    change `batch_stats`. One function per (model, bn_mode), so every probe of a model shares
    its compiles.
    """
    objective.check_bn_mode(bn_mode, 'probes.bn_mode')
    if getattr(model, 'scan_blocks', False) and jax.default_backend() == 'cpu':
        # Same numbers, unrolled: the forward-mode convolutions of an HVP, inside a loop body,
        # are not in the layout XLA:CPU's fast convolution needs (docs/notes.md).
        model = model.clone(scan_blocks=False)
    return objective.mean_loss(model, bn_mode)


def mean_loss_fn(
    model: nn.Module, batch_stats: PyTree, batch: dict, bn_mode: str = 'train'
) -> Callable[[PyTree], jax.Array]:
    """params -> `probe_loss(model, bn_mode)(params, batch, batch_stats)`."""
    loss = probe_loss(model, bn_mode)
    return lambda params: loss(params, batch, batch_stats)


def make_sharpness_probe(
    model: nn.Module,
    num_iters: int = 20,
    tol: float = 1e-3,
    bn_mode: str = 'train',
    trace_samples: int = 0,
) -> Callable[..., tuple[dict[str, float], PyTree]]:
    """Returns `probe(params, batch_stats, batch, v0, key, update) -> (metrics, eigenvector)`.

    Sharpness of the mean loss at `params` on `batch`, warm-started from `v0` (pass the
    returned eigenvector back in). Metrics: `hessian/lambda_max`, `hessian/grad_curvature`
    (g^T H g / g^T g), `hessian/num_hvps` [, `hessian/update_curvature` (u^T H u / u^T u for
    the last update u = params - previous params, if `update` is given and non-zero),
    `hessian/trace`, `hessian/trace_stderr` (Hutchinson, Rademacher)]. lambda_max is
    ALGEBRAIC (`curvature.lambda_max`: power iteration with PyHessian's rule, stop when the
    Rayleigh quotient changes by < `tol` relative, at most `num_iters` HVPs per run; if the
    dominant eigenvalue mu < 0, a second run on H - mu I finds the top).

    A thin wrapper of `curvature`: its loops run on the host around one jitted HVP (on
    XLA:CPU a convolution's gradient inside a `lax` loop body is far slower, docs/notes.md),
    and on this single batch the gradient is linearised once per probe.
    """
    loss = probe_loss(model, bn_mode)

    def probe(params, batch_stats, batch, v0, key=None, update=None):
        h = curvature.Hessian(loss, params, batch, state=batch_stats)
        lam, vec, _ = curvature.lambda_max(h.hvp, h.flatten(v0), num_iters, tol)
        out = {
            'hessian/lambda_max': lam,
            'hessian/grad_curvature': curvature.gradient_curvature(h),
        }
        if update is not None and float(otu.tree_norm(update)) > 0:
            u = h.flatten(update)
            out['hessian/update_curvature'] = curvature.directional_curvature(h.hvp, u)
        if trace_samples:
            trace, stderr, _ = curvature.hutchinson_trace(h.hvp, h.dim, key, trace_samples, h.dtype)
            out['hessian/trace'], out['hessian/trace_stderr'] = trace, stderr
        out['hessian/num_hvps'] = h.num_hvps
        return out, h.unflatten(vec)

    return probe
