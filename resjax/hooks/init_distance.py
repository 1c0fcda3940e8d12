"""The init-distance probe: `init_distance/<layer>` and `init_distance/global`
(`resjax.probes.blocks.init_distance`), how far the parameters at a step have moved from the
run's step-0 parameters (a constructed run's: its identity blocks). Config: `probes.every_steps`;
the numbers join the signal probes' row (`resjax.hooks.signals`).

State, not checkpointed: the step-0 parameters, a copy taken before the first step, rebuilt on
resume from the seed (or the run's saved constructed start), so they are the same numbers.
"""

from __future__ import annotations

from typing import Any

import jax

from resjax.hooks import base
from resjax.probes import blocks


class InitDistance(base.Hook):
    """||W_t - W_0|| / ||W_0|| per conv and dense layer, and over every parameter."""

    name = 'init_distance'
    every_key = 'probes.every_steps'
    when = base.BEFORE
    row = 'probe'

    def __init__(self, ctx: base.Context, state: Any):
        super().__init__(ctx, state)
        self._initial = ctx.initial_params()
        self._distance = jax.jit(blocks.init_distance)

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        return jax.device_get(self._distance(self.ctx.to_global(state.params), self._initial))
