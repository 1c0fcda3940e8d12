"""Checkpoint inspection: what `scripts/inspect_checkpoint.py` does, as library functions.

Each probe is one module of this package, found by name (`PROBES`): its options, its numbers
(`compute`: one loaded run -> its numbers, no figure, no file), its text line and its draw
function (every run's numbers -> a figure). `run_probe(name, runs, out_dir, opts)` runs one and
writes the PNG beside its numbers (JSON, and npz for arrays); `inspect` loads the runs
(`resjax.runs`, read-only) and runs several. `Options` has one field per option that the
probe modules declare (`common.OPTIONS` for the shared ones); `make_options` builds it from
settings (the study's `study.inspect`) and `validate` checks it, once, for every caller.

Semantics shared by every probe (docs/inspection.md):
- loss = MEAN softmax cross-entropy in nats over the probe examples, no weight decay
  (`resjax.objective`); accuracy the fraction correct; all arithmetic float32 (the model's
  compute dtype), host summaries float64.
- probe examples = the first `examples` training examples of the run's epoch-0 order
  (seed-dependent: runs with the same seed see the same examples), without augmentation for
  in-memory datasets and CIFAR-style augmentation.
- BatchNorm in 'eval' mode (running statistics) unless `bn_mode='train'` (the probe batch's
  statistics, running statistics untouched); the signal probe always uses training mode, as
  the training loop's probes do.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from resjax import plots, runs
from resjax.inspection import common

InspectError = runs.RunError  # One error class for run loading and inspection (scripts catch it).

# The probes, in the order of `--probes`' help.
PROBES: dict[str, common.Probe] = {
    name: importlib.import_module(f'{__name__}.{name}').PROBE
    for name in (
        'summary',
        'eval',
        'hessian',
        'spectrum',
        'landscape1d',
        'landscape2d',
        'interpolate',
        'lesion',
        'shattering',
        'signals',
        'blocks',
    )  # fmt: skip
}
# The order of the options (the script's flags, the settings a probe records): the shared ones,
# then each probe's own, probes in this order.
_OPTION_ORDER = ('hessian', 'spectrum', 'landscape1d', 'interpolate', 'eval', 'shattering')
OPTIONS: dict[str, common.Option] = {
    **common.OPTIONS,
    **{k: v for name in _OPTION_ORDER for k, v in PROBES[name].options.items()},
}
assert set(OPTIONS) == set(common.OPTIONS).union(*(p.options for p in PROBES.values()))

Options = dataclasses.make_dataclass(
    'Options',
    [
        (
            name,
            o.type,
            dataclasses.field(default=o.default, metadata={'help': o.help, 'choices': o.choices}),
        )
        for name, o in OPTIONS.items()
    ],  # fmt: skip
    frozen=True,
)
Options.__module__ = __name__
Options.__doc__ = """Every option of the probes, as `OPTIONS` declares them: one field each, with
its default and metadata `help` and (an enum) `choices`. scripts/inspect_checkpoint.py makes one
flag of each field. Units in docs/inspection.md."""


def make_options(settings: Mapping[str, Any], what: str = 'inspection option') -> Any:
    """`Options` from `settings` ({option: value}; the rest default). Raises InspectError for a
    name that is no option (`what` names such a key in the message)."""
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        raise InspectError(f'unknown {what}(s) {unknown}; use some of {list(OPTIONS)}')
    return Options(**settings)


def validate(probes: list[str], opts: Any) -> None:
    """Raises InspectError (one line) for unknown probes or impossible options."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise InspectError(f'unknown probe(s) {unknown}; use some of {list(PROBES)}')
    check_options(opts, probes)


def check_options(opts: Any, probes: list[str], prefix: str = '--') -> None:
    """Raises InspectError (one line) for an impossible option (some only when `probes` use
    them); an option is named `<prefix><name>` in the message ('--grid', 'study.inspect.grid')."""
    try:
        for name, option in OPTIONS.items():
            value = getattr(opts, name)
            if option.choices and value not in option.choices:
                raise InspectError(f'--{name}={value!r}; use one of {option.choices}')
            if option.positive and value <= 0:
                raise InspectError(f'--{name}={value} must be positive')
        for probe in PROBES.values():
            if probe.check:
                probe.check(opts, probes)
    except InspectError as e:
        if prefix == '--':
            raise
        raise InspectError(str(e).replace('--', prefix)) from None


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in label).strip('_')


def write_outputs(name: str, probe: common.Probe, numbers: dict, out_dir: str, opts: Any,
                  figure: Any) -> dict:  # fmt: skip
    """The one writer of a probe's outputs in `out_dir`: `<name>.npz` of its arrays (keys
    '<label>/<key>', and its settings), `<name>.png` of `figure` with `<name>.json` of its
    numbers beside it (or several figures, each with its own numbers, or the JSON alone
    without a figure). Returns {run label: JSON numbers}."""
    result = {
        label: {k: v for k, v in r.items() if k not in probe.arrays} for label, r in numbers.items()
    }
    settings = {'settings': dataclasses.asdict(opts)} if probe.settings else {}
    if probe.arrays:
        arrays = {f'{_safe(label)}/{k}': r[k] for label, r in numbers.items() for k in probe.arrays}
        npz_settings = {k: json.dumps(v) for k, v in settings.items()}
        np.savez(os.path.join(out_dir, f'{name}.npz'), **npz_settings, **arrays)
    document = {**settings, 'runs': result} if settings else result
    if isinstance(figure, dict):  # Several figures, each with its own numbers.
        for path, (fig, figure_numbers) in figure.items():
            folder, base = os.path.split(os.path.join(out_dir, path))
            plots.save_figure(fig, folder, base, figure_numbers)
        figure = None
    if figure is None:
        plots.write_json(os.path.join(out_dir, f'{name}.json'), document)
    else:
        plots.save_figure(figure, out_dir, name, document)
    return result


def run_probe(name: str, targets: list[runs.Run], out_dir: str, opts: Any) -> dict:
    """Computes probe `name` on each run, draws its figure and writes `<name>.png` beside its
    numbers (`<name>.json`, and `<name>.npz` for arrays); returns {run label: JSON numbers}."""
    probe = PROBES[name]
    extra = probe.setup(targets, opts) if probe.setup else {}
    numbers = {}
    for run in targets:
        t = common.Timer()
        r = numbers[run.label] = probe.compute(run, opts, **extra)
        if probe.timed:
            r['seconds'] = t()
        if line := probe.text and probe.text(run.label, r):
            print(line)
    figure = None
    if probe.draw:
        figure = probe.draw({r.label: {'step': r.step, **numbers[r.label]} for r in targets}, opts)
    return write_outputs(name, probe, numbers, out_dir, opts, figure)


def inspect(
    workdirs: list[str], probes: list[str], out_dir: str, opts: Any, step: int | None = None
) -> dict:
    """Loads every workdir (read-only) and runs `probes` in order; returns {probe: numbers}
    with each probe's wall time in seconds under `timings` (also in `timings.json`)."""
    validate(probes, opts)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InspectError(f'--out {out_dir!r} is a file; give a directory')
    targets = runs.load_runs(workdirs, step, opts.batch)
    os.makedirs(out_dir, exist_ok=True)
    results, timings = {}, {}
    for name in probes:
        t = common.Timer()
        logging.info('probe %s ...', name)
        results[name] = run_probe(name, targets, out_dir, opts)
        timings[name] = t()
        logging.info('probe %s done in %.1f s', name, timings[name])
    results['timings'] = timings
    plots.write_json(os.path.join(out_dir, 'timings.json'), timings)
    return results
