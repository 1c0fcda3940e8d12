"""Evaluation: `eval/loss` (mean cross-entropy) and `eval/accuracy` over every eval example
once, BN in eval mode (running statistics), after the step and after the last one. Its time is
not training time. Config: `train.eval_every_steps`, `train.eval_batch_size`.

State: none.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from resjax.hooks import base


class Evaluate(base.Hook):
    """Evaluates the state on the eval split (module docstring)."""

    name = 'eval'
    every_key = 'train.eval_every_steps'
    at_last = True
    untimed = True

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        ctx = self.ctx
        sums = None
        for batch in ctx.dataset.eval_batches():
            out = ctx.eval_step(state, ctx.put_batch(batch))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = ctx.host(sums)
        row = {
            'eval/loss': sums['loss_sum'] / sums['count'],
            'eval/accuracy': sums['correct'] / sums['count'],
        }
        logging.info(
            'step %d/%d | eval loss %.4f | eval acc %.4f',
            step,
            self.last,
            row['eval/loss'],
            row['eval/accuracy'],
        )
        return row
