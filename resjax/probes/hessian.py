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
import numpy as np
import optax.tree_utils as otu

from resjax import xla
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
    if getattr(model, 'scan_blocks', False) and jax.default_backend() == 'cpu':
        # Same numbers, unrolled: the forward-mode convolutions of an HVP, inside a loop body,
        # are not in the layout XLA:CPU's fast convolution needs (docs/notes.md).
        model = model.clone(scan_blocks=False)

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
    ALGEBRAIC: power iteration (PyHessian's rule: stop when the Rayleigh quotient changes by
    < `tol` relative, at most `num_iters` HVPs) finds the dominant eigenvalue mu; if mu < 0, a
    second one on H - mu I finds the top.

    The iterations run on the host around ONE jitted HVP, not under `lax.while_loop`: on
    XLA:CPU a convolution's gradient inside a loop body misses the fast Eigen path and one
    HVP there cost dozens of standalone ones (docs/notes.md). A scalar per iteration
    crosses to the host; one compile serves every iteration and every probe.
    """

    def loss_of(params, batch_stats, batch):
        return mean_loss_fn(model, batch_stats, batch, bn_mode)

    @xla.jit
    def hvp_dot(params, batch_stats, batch, v, shift):
        hv = curvature.hvp(loss_of(params, batch_stats, batch), params, v)
        hv = otu.tree_add_scale(hv, -shift, v)
        return hv, otu.tree_vdot(hv, v)

    @xla.jit
    def grad_curvature(params, batch_stats, batch):
        loss = loss_of(params, batch_stats, batch)
        return curvature.directional_curvature(
            lambda v: curvature.hvp(loss, params, v), jax.grad(loss)(params)
        )

    normalise = jax.jit(lambda v: otu.tree_scale(1.0 / otu.tree_norm(v), v))
    deflate = jax.jit(lambda v, u: otu.tree_add_scale(v, -otu.tree_vdot(u, v), u))

    def power(args, v, shift):
        q_prev, n = None, 0
        while n < num_iters:
            v = normalise(v)
            hv, q = hvp_dot(*args, v, shift)
            q, n = float(q), n + 1
            if q_prev is not None and abs(q - q_prev) / (abs(q_prev) + 1e-6) < tol:
                break
            q_prev, v = q, hv
        return q, normalise(hv), n

    def probe(params, batch_stats, batch, v0, key=None, update=None):
        args = (params, batch_stats, batch)
        mu, vec, n = power(args, v0, 0.0)
        lam = mu
        if mu < 0:  # Negative curvature dominates: find the top of the spectrum too.
            start = deflate(otu.tree_ones_like(v0), vec)
            nu, top, m = power(args, start, mu)
            lam, vec, n = mu + nu, top, n + m
        out = {
            'hessian/lambda_max': lam,
            'hessian/grad_curvature': float(grad_curvature(*args)),
            'hessian/num_hvps': n + 1,
        }
        if update is not None and float(otu.tree_norm(update)) > 0:
            out['hessian/update_curvature'] = float(hvp_dot(*args, normalise(update), 0.0)[1])
            out['hessian/num_hvps'] += 1
        if trace_samples:
            values = []
            for k in jax.random.split(key, trace_samples):
                z = otu.tree_random_like(k, params, sampler=jax.random.rademacher)
                values.append(float(hvp_dot(*args, z, 0.0)[1]))
            out['hessian/trace'] = float(np.mean(values))
            out['hessian/trace_stderr'] = float(np.std(values, ddof=1) / np.sqrt(len(values)))
            out['hessian/num_hvps'] += trace_samples
        return out, vec

    return probe


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
