"""The init-angle probe: `init_angle/<layer>` and `init_angle/global`, the angle in degrees each
conv and dense filter has turned since step 0 (`resjax.probes.angles`), a distance from init
that BatchNorm's scale invariance does not blur. Config: `probes.init_angle_every_steps`.

State, not checkpointed: the step-0 parameters, shared with `init_distance`
(`Context.initial_params`).
"""

from __future__ import annotations

from typing import Any

import jax

from resjax.hooks import base
from resjax.probes import angles


class InitAngle(base.Hook):
    """Per-filter angles between the parameters at a step and at step 0."""

    name = 'init_angle'
    every_key = 'probes.init_angle_every_steps'
    when = base.BEFORE

    def __init__(self, ctx: base.Context, state: Any):
        super().__init__(ctx, state)
        self._initial = ctx.initial_params()
        self._angles = jax.jit(angles.init_angle)

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        return jax.device_get(self._angles(self.ctx.to_global(state.params), self._initial))
