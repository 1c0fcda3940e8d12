"""The training loop's periodic work as hooks (`resjax.hooks.base` has the interface), one
module each, switched on by their config key (`Hook.every_key`; 0 = off).

A new probe is one module with a `Hook` subclass, its class in `HOOKS`, and its config key in
`resjax.config_lib.default_config`.
"""

from __future__ import annotations

from typing import Any

from resjax.hooks import (
    checkpoints,
    evaluate,
    init_angle,
    init_distance,
    log,
    sharpness,
    signals,
)
from resjax.hooks.base import AFTER, BEFORE, STEP, WHEN, Context, Hook, StepData, every_steps
from resjax.hooks.log import Throughput

__all__ = [
    'AFTER', 'BEFORE', 'HOOKS', 'STEP', 'WHEN', 'Context', 'Hook', 'StepData', 'Throughput',
    'from_config', 'rows',
]  # fmt: skip

# In the order the loop runs them at one point of a step, which is the order of their rows in
# metrics.jsonl.
HOOKS: tuple[type[Hook], ...] = (
    sharpness.Sharpness,
    init_distance.InitDistance,
    signals.SignalProbes,
    init_angle.InitAngle,
    log.TrainLog,
    evaluate.Evaluate,
    checkpoints.Checkpoint,
)


def from_config(ctx: Context, state: Any) -> list[Hook]:
    """The hooks `ctx.config` switches on (a period > 0), in `HOOKS` order, built for a run
    that starts from `state` (in the loop's layout)."""
    return [hook(ctx, state) for hook in HOOKS if every_steps(ctx.config, hook.every_key)]


def rows(done: list[tuple[Hook, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of one step's (hook, metrics) pairs: one per row name
    (`Hook.row`, else its name), in the order of each row's first hook."""
    lines: dict[str, dict[str, Any]] = {}
    for hook, metrics in done:
        lines.setdefault(hook.row or hook.name, {}).update(metrics)
    return list(lines.values())
