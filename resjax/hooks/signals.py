"""The signal and block probes: the per-layer rows of the probe variant of the train step
(`resjax.steps.make_train_step(probes=True)`: `grad_norm/`, `param_norm/`, `update_ratio/`,
activation and block signals, `probe/loss`), which the loop runs instead of the plain step when
this hook is due, so the probes share the step's gradient. They describe the parameters before
the step's update and are logged at its step. Config: `probes.every_steps`.

State: none.
"""

from __future__ import annotations

from typing import Any

from resjax.hooks import base


class SignalProbes(base.Hook):
    """The probe step's `probes` outputs, on the host."""

    name = 'probe'
    every_key = 'probes.every_steps'
    when = base.STEP

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        return self.ctx.host(data.outputs['probes'])
