"""Checkpoints: the state saved (in the background) after the step, after the last step, and at
a preemption, which then ends training. Config: `train.checkpoint_every_steps`,
`train.keep_checkpoints`.

A save runs while the next step computes: its result is awaited right after that step is
dispatched (`checkpoint.check_saved`), so a failed save stops the run there, one step later
(docs/notes.md, orbax). A preemption is SIGTERM (what TPU VMs and most schedulers send before
killing a job), or orbax's multi-host preemption sync point; the run saves at once and stops.
Every save first checks that training has not diverged (`train.on_nonfinite='stop'`): no
checkpoint holds a diverged state.

State, not checkpointed: whether a save is under way, and the SIGTERM flag (both per process).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from absl import logging

from resjax import checkpoint
from resjax.hooks import base


class Checkpoint(base.Hook):
    """Saves the state (module docstring); sets `stop` at a preemption."""

    name = 'checkpoint'
    every_key = 'train.checkpoint_every_steps'
    at_last = True

    def __init__(self, ctx: base.Context, state: Any):
        super().__init__(ctx, state)
        self._saving = False  # A save is under way in the background.
        self._preemption = False  # Preempted at this step.
        self._preempted = _PreemptionFlag()

    def due(self, step: int) -> bool:
        # Asked once per step: `reached_preemption` is a sync point of all processes.
        self._preemption = self._preempted.is_set() or self.ctx.manager.reached_preemption(step)
        return self._preemption or super().due(step)

    def observe(self, state: Any, step: int, data: base.StepData) -> None:
        if self._saving:
            # The save started after the previous step ends before this step's results are
            # used (it overlaps the step's device work): a failed save stops the run here.
            checkpoint.check_saved(self.ctx.manager)
            self._saving = False

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        ctx = self.ctx
        ctx.check_finite(state)
        checkpoint.save(ctx.manager, ctx.to_global(state))
        self._saving = True
        if self._preemption and step != self.last:
            logging.warning(
                'Preempted: saved step %d in %s; rerun the same command to resume.',
                step,
                ctx.workdir,
            )
            self.stop = True
        if self.stop or step == self.last:
            checkpoint.check_saved(ctx.manager)
        return {}

    def close(self) -> None:
        self._preempted.restore()


class _PreemptionFlag:
    """Records SIGTERM instead of dying mid-step; the hook checks it once per step."""

    def __init__(self):
        self._set = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
