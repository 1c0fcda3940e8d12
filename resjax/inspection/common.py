"""What every probe module shares: the option and probe declarations, the shared options, the
probe examples, the eval-mode evaluation, the probe Hessian and a run's initial variables."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import construct, landscape, objective, runs, steps, xla
from resjax.probes import curvature, hessian

PyTree = Any
Opts = Any  # An `inspection.Options`: one attribute per declared option.
InspectError = runs.RunError
_NO_OPT = optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))


@dataclasses.dataclass(frozen=True)
class Option:
    """One inspection option: its type, default, help text and, for an enum, its choices.
    `positive`: values <= 0 are refused. scripts/inspect_checkpoint.py makes a flag of it."""

    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    positive: bool = False


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe, as `inspection.run_probe` runs it.

    `compute(run, opts, **setup(runs, opts))` returns one checkpoint's numbers (floats, lists,
    numpy arrays; no figure, no file); `draw({label: numbers with 'step'}, opts)` returns the
    figure, or {path under the output directory: (figure, its numbers)} for several.
    `options` are the options the probe's module declares; `check(opts, probes)` refuses
    impossible values of them (InspectError, one line) beyond `Option.positive` and choices.
    """

    compute: Callable[..., dict]
    draw: Callable[[dict[str, dict], Any], Any] | None = None
    arrays: tuple[str, ...] = ()  # keys written to <name>.npz as '<label>/<key>', not to JSON
    settings: bool = False  # <name>.json = {'settings': opts, 'runs': ...}; also in the npz
    timed: bool = False  # each run's numbers end with 'seconds', its compute time
    text: Callable[[str, dict], str | None] | None = None  # printed after each run
    setup: Callable[[list[runs.Run], Any], dict] | None = None
    options: dict[str, Option] = dataclasses.field(default_factory=dict)
    check: Callable[[Any, list[str]], None] | None = None


# The options most probes read.
OPTIONS = {
    'examples': Option(int, 256, 'Probe examples K (first K training examples).', positive=True),
    'batch': Option(int, 128, 'Examples per forward / HVP call.', positive=True),
    'bn_mode': Option(str, 'eval', 'BatchNorm mode of loss probes.', ('eval', 'train')),
    'seed': Option(int, 0, 'Seed of directions, Lanczos and Hutchinson draws.'),
}


class Timer:
    """Seconds since it was made, rounded to 0.01, each time it is called."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def probe_batches(run: runs.Run, opts: Any) -> list[dict[str, jax.Array]]:
    """The first `opts.examples` training examples in padded batches of `opts.batch`; refuses
    BN train mode with a padded batch (padding would enter the batch statistics)."""
    ex = runs.train_examples(run, opts.examples)
    n = len(ex['label'])
    if opts.bn_mode == 'train' and n % min(opts.batch, n):
        raise InspectError(f'--bn_mode=train needs --examples ({n}) divisible by --batch')
    return runs.to_batches(ex, min(opts.batch, n))


def point(state: steps.TrainState) -> dict:
    """The variables of `state` as a landscape point: {'params', 'batch_stats'}."""
    return {'params': state.params, 'batch_stats': state.batch_stats}


def evaluate(run: runs.Run, batches: list[dict], bn_mode: str = 'eval') -> dict[str, float]:
    """Mean loss (nats) and accuracy of the run's checkpoint over every unmasked example
    (`objective.loss_and_accuracy`, BN in `bn_mode`)."""
    values = landscape.evaluate_points(
        objective.loss_and_accuracy(run.model, bn_mode), point(run.state), [],
        np.zeros((1, 0)), batches, chunk=1,
    )  # fmt: skip
    return {k: float(v[0]) for k, v in values.items()}


def hessian_of(run: runs.Run, batches: list[dict], bn_mode: str) -> curvature.Hessian:
    """The Hessian of the mean loss over every unmasked example of `batches` at the checkpoint
    (`curvature.Hessian`: flat HVPs, batches weighted by example count)."""
    loss = hessian.probe_loss(run.model, bn_mode)
    return curvature.Hessian(loss, run.state.params, batches, state=run.state.batch_stats)


def initial_state(run: runs.Run) -> steps.TrainState:
    """The exact step-0 state of this run (same model, optimizer, image shape and seed; for a
    `train.init_from` run, the constructed start it saved). Raises InspectError (one line) if
    that start cannot be had."""
    try:
        return construct.initial_state(
            run.config, run.model, run.tx, run.dataset.image_shape, run.workdir
        )
    except ValueError as e:
        raise InspectError(f'{run.workdir!r}: {e}') from None


_INIT_FNS: dict = {}


def initial_variables(run: runs.Run) -> steps.TrainState:
    """The run's exact step-0 params and BN statistics (`steps.create_train_state` without the
    optimizer), compiled once per (model, image shape) with XLA's fast-compile options."""
    if run.config.train.init_from:
        return initial_state(run).replace(opt_state=())
    key = (run.model, run.dataset.image_shape)
    seed = jnp.int32(run.config.seed)
    if key not in _INIT_FNS:

        def init(seed):
            state = steps.create_train_state(run.model, _NO_OPT, run.dataset.image_shape, seed)
            return state.replace(opt_state=())

        _INIT_FNS[key] = jax.jit(init).lower(seed).compile(xla.FAST_COMPILE)
    return _INIT_FNS[key](seed)
