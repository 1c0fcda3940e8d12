"""Train-metrics rows: the mean of each step's `train/loss`, `train/accuracy`, `lr` and
`train/grad_norm` since the previous row, with `steps_per_sec` of the timed steps and the ETA in
the log line. Also after the last step. Config: `train.log_every_steps`.

Each row first checks that training has not diverged (`train.on_nonfinite='stop'`: the loop
ends with NonFiniteError); with 'skip' it adds `train/skipped_steps`, the updates skipped so far.

State, not checkpointed: the steps' metrics since the last row (a resumed run's first row
averages only the steps it ran) and the `Throughput` clock (restarted on resume).
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from resjax.hooks import base
from resjax.logs import format_seconds
from resjax.metrics import mean_metrics


class TrainLog(base.Hook):
    """Logs the train metrics averaged since the last row (module docstring)."""

    name = 'train'
    every_key = 'train.log_every_steps'
    at_last = True

    def __init__(self, ctx: base.Context, state: Any):
        super().__init__(ctx, state)
        self._rows = []  # The steps' train metrics since the last row, on the device.

    def observe(self, state: Any, step: int, data: base.StepData) -> None:
        self._rows.append(data.outputs['train'])

    def run(self, state: Any, step: int, data: base.StepData) -> dict[str, Any]:
        ctx = self.ctx
        row = mean_metrics(ctx.host(self._rows))
        rate = ctx.timer.rate(step)
        if rate is not None:  # None when every step since the last row compiled.
            row['steps_per_sec'] = rate
        self._rows = []
        ctx.check_finite(state)
        if ctx.config.train.on_nonfinite == 'skip':
            row['train/skipped_steps'] = int(ctx.host(state.skipped_steps))
        logging.info(
            'step %d/%d | loss %.4f | acc %.3f | %s steps/s | ETA %s',
            step,
            self.last,
            row['train/loss'],
            row['train/accuracy'],
            '-' if rate is None else f'{rate:.1f}',
            ctx.timer.eta(self.last - step),
        )
        return row


class Throughput:
    """Steps/sec and ETA from timed steps only. The loop pauses the clock around what is not
    training (a step that compiles, an `untimed` hook) and resumes it after."""

    def __init__(self, step: int):
        self._step, self._time = step, time.perf_counter()  # Start of the running segment.
        self._steps, self._seconds = 0, 0.0  # Timed since the last `rate`.
        self._all_steps, self._all_seconds = 0, 0.0  # Timed in this run: the ETA's rate.
        self._paused_at = self._time

    def pause(self, step: int) -> None:
        """Ends the running segment at `step` (device work done: the caller synchronised)."""
        if self._time is not None:
            now = time.perf_counter()
            self._steps += step - self._step
            self._seconds += now - self._time
            self._time, self._paused_at = None, now

    def resume(self, step: int) -> float:
        """Starts a segment at `step`; returns the seconds spent paused."""
        now = time.perf_counter()
        paused = now - self._paused_at if self._time is None else 0.0
        self._step, self._time = step, now
        return paused

    def rate(self, step: int) -> float | None:
        """Steps/sec of the timed steps since the last call, or None if there were none."""
        self.pause(step)
        steps, seconds = self._steps, self._seconds
        self._all_steps += steps
        self._all_seconds += seconds
        self._steps, self._seconds = 0, 0.0
        self.resume(step)
        return steps / seconds if steps and seconds > 0 else None

    def eta(self, remaining_steps: int) -> str:
        """Time left at this run's timed rate ('?' before any step was timed)."""
        if not self._all_steps:
            return '?'
        return format_seconds(remaining_steps * self._all_seconds / self._all_steps)
