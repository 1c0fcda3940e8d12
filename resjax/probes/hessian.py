"""The loss whose curvature resjax probes, and the sharpness probe the train loop runs.

The probed loss is the MEAN cross-entropy over the probe examples, without weight decay (that
belongs to the optimizer). BatchNorm has two documented modes (`probes.bn_mode`):

- 'train': batch statistics of the probe batch, running statistics left untouched
  (init2winit's choice; the loss the optimizer actually descends);
- 'eval': running statistics (PyHessian's and loss-landscape's choice; a fixed function of
  the parameters, so the Hessian is that of the deployed network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from resjax.probes import curvature
from resjax.steps import cross_entropy

PyTree = Any
BN_MODES = ('train', 'eval')


def mean_loss_fn(
    model: nn.Module, batch_stats: PyTree, batch: dict, bn_mode: str = 'train'
) -> Callable[[PyTree], jax.Array]:
    """params -> mean cross-entropy over `batch` (weighted by `batch['mask']` if present).

    `bn_mode` as in the module docstring; in neither mode does the probe change `batch_stats`.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f'probes.bn_mode={bn_mode!r} is unknown; use one of {BN_MODES}')

    def loss(params):
        variables = {'params': params, 'batch_stats': batch_stats}
        if bn_mode == 'train':
            logits, _ = model.apply(
                variables, batch['image'], train=True, mutable=['batch_stats']
            )  # The updated statistics are discarded.
        else:
            logits = model.apply(variables, batch['image'], train=False)
        per_example = cross_entropy(logits, batch['label'])
        if 'mask' in batch:
            return jnp.sum(per_example * batch['mask']) / jnp.sum(batch['mask'])
        return jnp.mean(per_example)

    return loss


def sharpness_probe(
    model: nn.Module,
    params: PyTree,
    batch_stats: PyTree,
    batch: dict,
    v0: PyTree,
    num_iters: int = 20,
    tol: float = 1e-3,
    bn_mode: str = 'train',
    trace_samples: int = 0,
    key: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], PyTree]:
    """Sharpness of the mean loss at `params` on `batch`, warm-started from `v0`.

    Returns `({'hessian/lambda_max', 'hessian/grad_curvature', 'hessian/num_hvps'
    [, 'hessian/trace', 'hessian/trace_stderr']}, eigenvector)`; pass the eigenvector back as
    the next call's `v0`. lambda_max is ALGEBRAIC: power iteration finds the dominant
    eigenvalue mu; if mu < 0 (negative curvature dominates), a second power iteration on
    H - mu I finds the top of the spectrum (under `lax.cond`, so one compile serves both).
    `grad_curvature` = g^T H g / g^T g, the curvature along the gradient of the same loss.
    """
    loss = mean_loss_fn(model, batch_stats, batch, bn_mode)
    hvp_fn = curvature.make_hvp(loss, params)
    mu, vec, n = curvature.power_iteration(hvp_fn, v0, num_iters, tol)

    def top_of_spectrum(_):
        shifted = lambda v: otu.tree_add_scale(hvp_fn(v), -mu, v)
        # Start away from the dominant (negative) direction.
        start = otu.tree_add_scale(
            otu.tree_ones_like(v0), -otu.tree_vdot(vec, otu.tree_ones_like(v0)), vec
        )
        nu, top_vec, m = curvature.power_iteration(shifted, start, num_iters, tol)
        return mu + nu, top_vec, n + m

    lam, vec, n = jax.lax.cond(mu < 0, top_of_spectrum, lambda _: (mu, vec, n), None)
    grad = jax.grad(loss)(params)
    out = {
        'hessian/lambda_max': lam,
        'hessian/grad_curvature': curvature.directional_curvature(hvp_fn, grad),
        'hessian/num_hvps': n + 1,
    }
    if trace_samples:
        trace, stderr = curvature.hutchinson_trace(hvp_fn, key, params, trace_samples)
        out['hessian/trace'], out['hessian/trace_stderr'] = trace, stderr
    return out, vec


def dataset_hvp_fn(
    model: nn.Module,
    params: PyTree,
    batch_stats: PyTree,
    batches: dict,
    bn_mode: str = 'eval',
) -> Callable[[PyTree], PyTree]:
    """v -> H v for the mean loss over several batches stacked on a leading axis.

    Each batch's HVP is weighted by its number of (unmasked) examples and the total divided by
    the number of examples: the Hessian of the MEAN loss over all of them, never a sum. Batches
    run one at a time under `lax.map` (memory of one batch). With `bn_mode='train'` each batch
    uses its own BN statistics, so the result differs from one big batch's; in 'eval' mode (or
    without BN) it equals the HVP of the concatenated batch.
    """
    count = lambda b: jnp.sum(b['mask']) if 'mask' in b else b['label'].shape[0]

    def hvp_fn(v):
        def one(b):
            n = count(b)
            hv = curvature.hvp(mean_loss_fn(model, batch_stats, b, bn_mode), params, v)
            return jax.tree.map(lambda x: x * n, hv), n

        hvs, ns = jax.lax.map(one, batches)
        total = jnp.sum(ns)
        return jax.tree.map(lambda x: jnp.sum(x, axis=0) / total, hvs)

    return hvp_fn
