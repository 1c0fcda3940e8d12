"""Orchestration: train the grid's unfinished runs one after another, inspect the final
checkpoints, write the report."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from resjax import plots, train
from resjax.logs import format_seconds
from resjax.study.config import StudyError
from resjax.study.grid import (
    DIVERGED,
    RunSpec,
    expand_grid,
    inspection_targets,
    load_status,
    read_json,
    run_state,
)
from resjax.study.report import write_report

# study.inspect keys passed to the inspection library's Options (the rest are study's own).
INSPECT_OPTIONS = (
    'examples',
    'batch',
    'bn_mode',
    'seed',
    'lanczos_order',
    'slq_draws',
    'grid',
    'range',
    'chunk',
)


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    report_only: bool = False,
    retry_diverged: bool = False,
    trainer: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
) -> dict:
    """Trains every unfinished run of the grid (one after another, in this process), draws the
    inspection figures of the finished deepest nets, and writes the report. Returns what
    `write_report` returns.

    `report_only` trains and inspects nothing: the report shows what exists and lists what is
    missing. `trainer` replaces `resjax.train.train_and_evaluate` (tests). Raises StudyError
    for a bad config or an unusable workdir, before anything compiles.
    """
    specs = expand_grid(config, workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise StudyError(f'workdir {workdir!r} cannot be created ({e.strerror})') from None
    if not report_only:
        if train_runs(specs, workdir, retry_diverged, trainer or train.train_and_evaluate):
            run_inspection(config.study.inspect, specs, workdir)
    return write_report(config, specs, workdir)


def train_runs(
    specs: list[RunSpec],
    workdir: str,
    retry_diverged: bool,
    trainer: Callable[[ml_collections.ConfigDict, str], Any],
) -> bool:
    """Trains the unfinished runs in order, logging progress with a study-wide ETA (cost taken
    as proportional to depth x steps, calibrated on the runs trained so far). A run that stops
    on a non-finite loss is marked DIVERGED and the study goes on. Returns False if a run
    returned unfinished (SIGTERM: the loop saved a checkpoint and stopped), True otherwise."""
    status = load_status(workdir)
    todo = [s for s in specs if run_state(s) != 'finished']
    states = {s.name: run_state(s) for s in specs}
    if not retry_diverged:
        for s in todo:
            if run_state(s) == 'diverged':
                logging.warning('study: %s diverged before; skipped (--retry_diverged)', s.name)
        todo = [s for s in todo if run_state(s) != 'diverged']
    logging.info(
        'study: %d of %d runs to train: %s',
        len(todo),
        len(specs),
        ', '.join(s.name for s in todo) or '-',
    )
    cost = lambda s: s.depth * s.config.train.steps  # noqa: E731
    done_cost, done_seconds = 0.0, 0.0
    for i, spec in enumerate(todo):
        remaining = sum(cost(s) for s in todo[i:])
        eta = (
            f', study ETA {format_seconds(remaining * done_seconds / done_cost)}'
            if done_cost
            else ''
        )
        logging.info(
            'study: run %d/%d %s (%s%s)', i + 1, len(todo), spec.name, run_state(spec), eta
        )
        if spec.source and states[spec.source] != 'finished':
            logging.warning(
                'study: %s skipped: its source run %s is %s', spec.name, spec.source,
                states[spec.source],
            )  # fmt: skip
            continue
        marker = os.path.join(spec.workdir, DIVERGED)
        if os.path.exists(marker):
            os.remove(marker)
        start = time.perf_counter()
        try:
            trainer(spec.config, spec.workdir)
            state = run_state(spec)
        except train.NonFiniteError as e:
            with open(marker, 'w') as f:
                f.write(str(e) + '\n')
            logging.warning('study: %s diverged: %s', spec.name, e)
            state = 'diverged'
        except train.ConfigError as e:
            raise StudyError(f'run {spec.name}: {e}') from None
        seconds = time.perf_counter() - start
        states[spec.name] = state
        done_cost, done_seconds = done_cost + cost(spec), done_seconds + seconds
        entry = status.setdefault(spec.name, {'seconds': 0.0})
        entry['seconds'] = round(entry['seconds'] + seconds, 1)
        entry['state'] = state
        plots.write_json(os.path.join(workdir, 'status.json'), status)
        logging.info('study: %s %s in %s', spec.name, state, format_seconds(seconds))
        if state != 'finished' and state != 'diverged':
            logging.warning(
                'study: %s stopped at %s (preempted); rerun to resume', spec.name, state
            )
            return False
    return True


def inspect_options(inspect_config: ml_collections.ConfigDict) -> dict:
    """The inspection library's Options fields taken from `study.inspect`."""
    return {k: inspect_config[k] for k in INSPECT_OPTIONS}


def run_inspection(
    inspect_config: ml_collections.ConfigDict, specs: list[RunSpec], workdir: str
) -> dict[str, str]:
    """Draws figures 5-7 with the inspection library (`resjax.inspection.inspect`) on the final
    checkpoints of `inspection_targets`, into `<workdir>/inspect/<figure>/`. A figure whose
    runs, checkpoints and options are those of its last drawing is not redrawn. Returns
    {figure: error message} for figures that could not be drawn (the report shows them)."""
    from resjax import inspection  # Import here: the study's training part does not need it.

    opts = inspection.Options(**inspect_options(inspect_config))
    errors = {}
    for figure, targets in inspection_targets(specs, inspect_config.max_depth).items():
        if figure not in inspect_config.figures:
            continue
        ready = [s for s in targets if run_state(s) == 'finished']
        if not ready:
            errors[figure] = 'no finished run to inspect'
            continue
        out_dir = os.path.join(workdir, 'inspect', figure)
        inputs = {
            'runs': [os.path.relpath(s.workdir, workdir) for s in ready],
            'steps': [s.config.train.steps for s in ready],
            'options': dataclasses.asdict(opts),
        }
        marker = os.path.join(out_dir, 'study_inputs.json')
        if read_json(marker) == json.loads(json.dumps(inputs)):
            logging.info('study: %s of %s is up to date', figure, [s.name for s in ready])
            continue
        logging.info('study: inspection %s of %s', figure, [s.name for s in ready])
        start = time.perf_counter()
        try:
            inspection.inspect([s.workdir for s in ready], [figure], out_dir, opts)
        except Exception as e:  # noqa: BLE001 (the report says what failed; the study goes on)
            logging.exception('study: inspection %s failed', figure)
            errors[figure] = f'{type(e).__name__}: {e}'.splitlines()[0]
            continue
        plots.write_json(marker, inputs)
        logging.info('study: %s done in %s', figure, format_seconds(time.perf_counter() - start))
    return errors
