"""The sharpness probe: `hessian/` metrics of the parameters at a step, before its update.

`hessian/lambda_max`, `hessian/grad_curvature`, `hessian/num_hvps` [, `hessian/update_curvature`,
`hessian/trace`, `hessian/trace_stderr`] (`resjax.probes.hessian.make_sharpness_probe`), and
`hessian/two_over_lr`: 2 / lr at the step, the stability edge of gradient descent that
lambda_max is compared with (absent when lr is 0, at a linear warm-up's first step).
Config: `probes.hessian_every_steps`, `probes.hessian_iters`, `probes.hessian_trace_samples`,
`probes.hessian_batch`, `probes.bn_mode`.

State, not checkpointed, rebuilt on resume:
- the power iteration's warm-start vector (the last probe's eigenvector): a resumed run starts
  again from the seed's random vector, so its first probe may take more HVPs;
- the fixed batch (`probes.hessian_batch='fixed'`): step 0's batch, whatever step the run
  starts at, read again from the data stream;
- the parameters before the last update, kept one step ahead of each probe for
  `hessian/update_curvature`: none on resume, so the first probe after a resume may lack it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from resjax import parallel, xla
from resjax.hooks import base
from resjax.probes import hessian


class Sharpness(base.Hook):
    """The sharpness probe (module docstring). Under pmap it runs under jit on replica 0's
    parameters and the global batch, so with bn_mode='train' and per-device BN it uses
    global-batch statistics (docs/parallel.md)."""

    name = 'hessian'
    every_key = 'probes.hessian_every_steps'
    when = base.BEFORE

    def __init__(self, ctx: base.Context, state: Any):
        super().__init__(ctx, state)
        probes = ctx.config.probes
        self._probe = hessian.make_sharpness_probe(
            ctx.model,
            probes.hessian_iters,
            bn_mode=probes.bn_mode,
            trace_samples=probes.hessian_trace_samples,
        )
        # Compiled once (eager tree_random_like compiles per leaf shape) and placed like the
        # parameters: a single-device vector made every probe compile twice.
        self._vector = xla.run_once(
            otu.tree_random_like,
            jax.random.PRNGKey(ctx.config.seed + 1),
            ctx.to_global(state.params),
            out_shardings=ctx.replicated,
        )
        self._fixed_batch = None
        self._previous_params = None

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        ctx = self.ctx
        params, batch_stats = ctx.to_global((state.params, state.batch_stats))
        update = None  # The last update, if its start point was kept (not on resume).
        if self._previous_params is not None:
            update = jax.tree.map(jnp.subtract, params, self._previous_params)
        row, self._vector = self._probe(
            params,
            batch_stats,
            self._batch(data),
            self._vector,
            key=jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), step),
            update=update,
        )
        self._previous_params = None
        lr = float(ctx.schedule(step))
        if lr > 0:
            row['hessian/two_over_lr'] = 2.0 / lr
        return row

    def observe(self, state: Any, step: int, data: base.StepData) -> None:
        if (step + 1) % self.every == 0:
            # The start point of this update, for the next probe's update curvature (a copy:
            # the step donates the state's buffers).
            self._previous_params = jax.tree.map(jnp.copy, self.ctx.to_global(state.params))

    def _batch(self, data: base.StepData) -> dict:
        """The probe's batch in jit's layout: this step's, or step 0's (comparable probes)."""
        ctx = self.ctx
        if ctx.config.probes.hessian_batch == 'fixed':
            if self._fixed_batch is None:
                first = next(ctx.dataset.train_batches(0))
                self._fixed_batch = parallel.shard_batch(first, ctx.mesh)
            return self._fixed_batch
        return parallel.shard_batch(data.batch, ctx.mesh) if ctx.pmap else data.device_batch
