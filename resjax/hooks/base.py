"""The interface of the training loop's hooks: `Hook`, the `Context` they share, `StepData`.

A training step s takes the parameters at s to those at s + 1. A hook runs at one of three
points of it (`Hook.when`):

- BEFORE: on the state at s, before the update (the probes that describe the parameters at s:
  the sharpness and init-distance probes); its metrics are logged at step s.
- STEP: from the outputs of the probe variant of the train step, which the loop runs instead of
  the plain one when such a hook is due (the signal and block probes share the step's
  gradient); logged at step s, describing the parameters before the update.
- AFTER: on the state after the update, with `step` = s + 1, the number of steps done
  (train-metrics rows, evaluation, checkpoints); logged at s + 1.

A hook is due every `every` steps (`every` comes from its config key, `every_key`; 0 is off and
builds no hook) and, with `at_last`, after the last step. When due, `run` returns its metrics
(names to host floats or scalars), which the loop writes to metrics.jsonl; BEFORE and STEP hooks
with the same `row` share one line. `observe` sees every step, due or not: a BEFORE hook's
after its run (what the next run needs from this step's start), a STEP or AFTER hook's right
after the step is dispatched (before its results are used), so every run sees the steps
already taken.

A hook's own state lives on the hook and is not checkpointed: each module says what its hook
keeps and how it is rebuilt on resume. A hook whose state must survive a resume would have to
save it with the train state; none needs to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import ml_collections

if TYPE_CHECKING:
    import flax.linen as nn
    import jax
    import optax
    import orbax.checkpoint as ocp

    from resjax.data import Dataset
    from resjax.hooks.log import Throughput

BEFORE, STEP, AFTER = 'before', 'step', 'after'
WHEN = (BEFORE, STEP, AFTER)  # In the order they come in a step.


@dataclasses.dataclass(frozen=True)
class Context:
    """What the hooks of one run share, built once by the trainer before the first step.

    Two layouts of the state: the loop's (`pmap`: one copy per local device on a leading axis;
    jit: global arrays replicated over `mesh`) and jit's, which `to_global` gives for either.
    """

    config: ml_collections.ConfigDict
    workdir: str
    model: nn.Module  # Without pmap's BN axis: the model the jit probes and evaluation apply.
    schedule: optax.Schedule
    dataset: Dataset
    mesh: jax.sharding.Mesh
    replicated: jax.sharding.NamedSharding  # Replicated over `mesh`: jit's layout of the state.
    pmap: bool
    start_step: int  # The step this process started from (0, or the resumed checkpoint's).
    manager: ocp.CheckpointManager
    eval_step: Callable[[Any, dict], dict]  # (state, device batch) -> sums, in the loop's layout.
    put_batch: Callable[[dict], dict]  # A host batch as the steps take it.
    host: Callable[[Any], Any]  # Host values of the steps' replicated outputs.
    to_global: Callable[[Any], Any]  # A tree in the loop's layout -> jit's (identity under jit).
    # The run's step-0 parameters in jit's layout, computed once: a copy of the starting state's
    # at step 0, rebuilt on resume (the seed's init or the saved constructed start).
    initial_params: Callable[[], Any]
    check_finite: Callable[[Any], None]  # Raises NonFiniteError if the state diverged ('stop').
    timer: Throughput  # Steps/sec of training alone: paused around compiles and evaluation.


@dataclasses.dataclass(frozen=True)
class StepData:
    """One training step as the hooks see it."""

    batch: dict  # This process's slice of the global batch, on the host.
    device_batch: dict  # `batch` as the step takes it (`Context.put_batch`).
    outputs: dict | None = None  # The step's metrics, {'train': ...[, 'probes': ...]}; None
    # before the step.


class Hook:
    """A periodic job of the training loop (module docstring): subclasses set the class
    attributes and override `run`, and `observe` if they keep state between runs."""

    name: ClassVar[str]  # Names its compile in the log and, by default, its metrics row.
    every_key: ClassVar[str]  # Its period's config key ('train.eval_every_steps'): 0 = off.
    when: ClassVar[str] = AFTER  # BEFORE, STEP or AFTER (module docstring).
    at_last: ClassVar[bool] = False  # Also due after the last step (AFTER hooks).
    untimed: ClassVar[bool] = False  # Its time is not training time: the throughput pauses.
    row: ClassVar[str | None] = None  # The BEFORE/STEP row it joins (another hook's name).

    def __init__(self, ctx: Context, state: Any):
        """`state`: the state the run starts from, in the loop's layout (its buffers are
        donated to the first step: copy what must outlive it)."""
        del state
        self.ctx = ctx
        self.every = every_steps(ctx.config, self.every_key)
        self.last = ctx.config.train.steps
        self.stop = False  # Set by `run` to end training after this step (a preemption).

    def due(self, step: int) -> bool:
        """Whether `run` runs at `step` (for AFTER hooks, the number of steps done)."""
        return step % self.every == 0 or (self.at_last and step == self.last)

    def run(self, state: Any, step: int, data: StepData) -> dict[str, Any]:
        """The hook's work at a due `step`; returns metrics (names to host scalars)."""
        raise NotImplementedError

    def observe(self, state: Any, step: int, data: StepData) -> None:
        """Called every step (module docstring), due or not; by default nothing."""
        del state, step, data

    def close(self) -> None:
        """Called once when the loop ends, normally or not; by default nothing."""


def every_steps(config: ml_collections.ConfigDict, key: str) -> int:
    """The value of a dotted config key ('probes.every_steps')."""
    section, name = key.split('.')
    return config[section][name]
