"""Orchestration: train the grid's unfinished runs, inspect the final checkpoints, write the
report; several processes may do this on one study workdir at once.

Each process walks the grid in training order and trains the first run that is neither
finished nor held by another process (`claims`: a flock per run), then walks it again. A
constructed run waits until its source is finished. The process that finds every run settled
(finished, diverged, or a constructed run whose source diverged) and none held takes the
study lock, inspects and writes the report; any other process leaves that to it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from resjax import plots, study_config, train
from resjax.logs import format_seconds
from resjax.study import claims
from resjax.study.config import StudyError
from resjax.study.grid import (
    DIVERGED,
    ERROR_FILE,
    INPUTS_FILE,
    RunSpec,
    expand_grid,
    inspection_inputs,
    inspection_targets,
    read_json,
    run_state,
)
from resjax.study.report import write_report

# Seconds between looks at the grid while a constructed run waits for a source that another
# process is training.
POLL_SECONDS = 5.0


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    report_only: bool = False,
    retry_diverged: bool = False,
    trainer: Callable[[ml_collections.ConfigDict, str], Any] | None = None,
) -> dict:
    """Trains the grid's unfinished runs that no other process holds, and, if that leaves
    every run settled, draws the inspection figures and writes the report.

    Returns what `write_report` returns (its `status` is 'complete' or 'incomplete': runs or
    figures missing, an inspection failed), or {'status': 'stopped'} when a run stopped at a
    checkpoint (SIGTERM; rerun to resume), or {'status': 'elsewhere', 'holder': ...} when
    other processes hold runs or the report (the last of them writes it). `report_only` trains
    and inspects nothing and renders what exists (waiting for a process that is writing the
    report). `trainer` replaces `resjax.train.train_and_evaluate` (tests). Raises StudyError
    for a bad config or an unusable workdir, before anything compiles.
    """
    specs = expand_grid(config, workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise StudyError(f'workdir {workdir!r} cannot be created ({e.strerror})') from None
    if not report_only:
        trainer = trainer or train.train_and_evaluate
        outcome, who = train_runs(specs, workdir, retry_diverged, trainer)
        if outcome == 'stopped':
            return {'status': 'stopped'}
        if outcome == 'held':
            logging.info('study: runs held by %s; the last process writes the report', who)
            return {'status': 'elsewhere', 'holder': who}
    handle, who = claims.study_lock(workdir, wait=False)
    if handle is None:
        if not report_only:
            logging.info('study: %s is inspecting and writing the report', who)
            return {'status': 'elsewhere', 'holder': who}
        logging.info('study: waiting for %s, which is writing the report', who)
        handle, _ = claims.study_lock(workdir, wait=True)
    try:
        if not report_only:
            run_inspection(config.study.inspect, specs, workdir)
        return write_report(config, specs, workdir)
    finally:
        handle.close()


def _categories(
    specs: list[RunSpec], workdir: str, retry_diverged: bool, started: float
) -> dict[str, tuple[str, str]]:
    """{run name: (category, detail)} in training order. Categories: 'done' (finished),
    'settled' (diverged and not retried, or a constructed run whose source is: detail says
    why), 'held' (detail: by whom), 'waiting' (a constructed run whose source is not finished
    yet) and 'free' (this process may claim it)."""
    out: dict[str, tuple[str, str]] = {}
    for spec in specs:
        state = run_state(spec)
        if state == 'finished':
            out[spec.name] = ('done', '')
            continue
        if state == 'diverged':
            # A run that diverged while this process ran is not retried, even by another process.
            # No mark any more: another process removed it to retry the run, and holds it.
            try:
                marked = os.path.getmtime(os.path.join(spec.workdir, DIVERGED))
            except FileNotFoundError:
                marked = None
            if marked is not None and (not retry_diverged or marked >= started):
                why = 'it diverged (its DIVERGED file says how; --retry_diverged retries it)'
                out[spec.name] = ('settled', why)
                continue
        if spec.source:
            source = out[spec.source][0]
            if source == 'settled':
                out[spec.name] = ('settled', f'its source run {spec.source} diverged')
                continue
            if source != 'done':
                out[spec.name] = ('waiting', spec.source)
                continue
        who = claims.holder(workdir, spec)
        out[spec.name] = ('held', who) if who else ('free', state)
    return out


def train_runs(
    specs: list[RunSpec],
    workdir: str,
    retry_diverged: bool,
    trainer: Callable[[ml_collections.ConfigDict, str], Any],
) -> tuple[str, str]:
    """Trains, one after another, the runs no other process holds, logging progress with an
    ETA of what is left unclaimed (cost taken as proportional to depth x steps, calibrated on
    the runs this process trained). A run that stops on a non-finite loss is marked DIVERGED
    and the study goes on.

    Returns ('done', '') once every run is settled and none is held, ('held', holder) when
    the runs left are held by other processes, ('stopped', name) if a run returned
    unfinished (SIGTERM: the loop saved a checkpoint and stopped).
    """
    started = time.time()
    cost = lambda s: s.depth * s.config.train.steps  # noqa: E731
    done_cost, done_seconds, warned = 0.0, 0.0, set()
    by_name = {s.name: s for s in specs}
    while True:
        cats = _categories(specs, workdir, retry_diverged, started)
        for name, (cat, detail) in cats.items():
            if cat == 'settled' and name not in warned:
                logging.warning('study: %s skipped: %s', name, detail)
                warned.add(name)
        free = [by_name[n] for n, (c, _) in cats.items() if c == 'free']
        trained = None
        for spec in free:
            with claims.claim(workdir, spec) as mine:
                # Claimed: look again, another process may have finished it since the scan.
                if not mine or run_state(spec) == 'finished':
                    continue
                left = [s for s in specs if cats[s.name][0] in ('free', 'waiting')]
                eta = (
                    f', ETA of the unclaimed runs '
                    f'{format_seconds(sum(map(cost, left)) * done_seconds / done_cost)}'
                    if done_cost
                    else ''
                )
                logging.info(
                    'study: training %s (%s; %d of %d runs finished%s)',
                    spec.name,
                    run_state(spec),
                    sum(c == 'done' for c, _ in cats.values()),
                    len(specs),
                    eta,
                )
                seconds, state = _train_one(spec, workdir, trainer)
                done_cost, done_seconds = done_cost + cost(spec), done_seconds + seconds
                trained = spec
            break
        if trained is not None and state not in ('finished', 'diverged'):
            logging.warning(
                'study: %s stopped at %s (preempted); rerun to resume', trained.name, state
            )
            return 'stopped', trained.name
        if free:  # Trained one, or lost a claim to another process: look at the grid again.
            continue
        held = sorted({d for c, d in cats.values() if c == 'held'})
        waiting = [n for n, (c, _) in cats.items() if c == 'waiting']
        if waiting:  # Their sources are held by other processes (or just released).
            logging.info(
                'study: %s waits for %s (held by %s)',
                ', '.join(waiting),
                ', '.join(sorted({cats[n][1] for n in waiting})),
                ', '.join(held) or 'another process',
            )
            time.sleep(POLL_SECONDS)
            continue
        if held:
            return 'held', ', '.join(held)
        return 'done', ''


def _train_one(
    spec: RunSpec, workdir: str, trainer: Callable[[ml_collections.ConfigDict, str], Any]
) -> tuple[float, str]:
    """Trains (or resumes) one claimed run; returns (seconds, its state after)."""
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
    claims.record_run(workdir, spec.name, state, seconds)
    logging.info('study: %s %s in %s', spec.name, state, format_seconds(seconds))
    return seconds, state


def run_inspection(
    inspect_config: ml_collections.ConfigDict, specs: list[RunSpec], workdir: str
) -> dict[str, str]:
    """Draws figures 5-7, 12 and 14 with the inspection library (`resjax.inspection.inspect`) on
    the final checkpoints of `inspection_targets`, into `<workdir>/inspect/<figure>/`. A
    figure whose runs, steps and options are those of its last drawing is not redrawn. A
    failure is written to `<figure>/study_error.txt` (the report names it and leaves out the
    figure if it is stale). Returns {figure: error message} of the figures not drawn."""
    from resjax import inspection  # Import here: the study's training part does not need it.
    from resjax.study import barriers

    opts = inspection.make_options(
        study_config.inspection_settings(inspect_config), 'study.inspect key'
    )
    errors = {}
    for figure, targets in inspection_targets(specs, inspect_config.max_depth).items():
        if figure not in inspect_config.figures:
            continue
        out_dir = os.path.join(workdir, 'inspect', figure)
        error_path = os.path.join(out_dir, ERROR_FILE)
        ready = [s for s in targets if run_state(s) == 'finished']
        if not ready:
            errors[figure] = 'no finished run to inspect'
            continue
        inputs = inspection_inputs(inspect_config, ready, workdir)
        marker = os.path.join(out_dir, INPUTS_FILE)
        if read_json(marker) == json.loads(json.dumps(inputs)):
            logging.info('study: %s of %s is up to date', figure, [s.name for s in ready])
            if os.path.exists(error_path):
                os.remove(error_path)
            continue
        logging.info('study: inspection %s of %s', figure, [s.name for s in ready])
        start = time.perf_counter()
        try:
            if figure == barriers.FIGURE:  # Two lines per net, drawn by the study itself.
                barriers.inspect_barriers(ready, out_dir, opts)
            else:
                inspection.inspect([s.workdir for s in ready], [figure], out_dir, opts)
        except Exception as e:  # noqa: BLE001 (the report says what failed; the study goes on)
            logging.exception('study: inspection %s failed', figure)
            errors[figure] = f'{type(e).__name__}: {e}'.splitlines()[0]
            os.makedirs(out_dir, exist_ok=True)
            with open(error_path, 'w') as f:
                f.write(errors[figure] + '\n')
            continue
        plots.write_json(marker, inputs)
        if os.path.exists(error_path):
            os.remove(error_path)
        logging.info('study: %s done in %s', figure, format_seconds(time.perf_counter() - start))
    return errors
