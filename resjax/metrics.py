"""Metric writing: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

TensorBoard files come from tensorboardX, which needs no TensorFlow (CLU's writers import
TensorFlow at import time; see docs/notes.md). Only process 0 writes."""

from __future__ import annotations

import json
import os
import threading

import jax
import numpy as np
from absl import logging


class MetricWriter:
    """Appends `{"step": int, name: float, ...}` lines to metrics.jsonl and scalars to TB.

    On resume from step k it drops the rows after k, and writes no metric twice for step k: a
    resumed run recomputes the probes of step k, whose rows the killed run may have written
    after saving checkpoint k.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._workdir = workdir
        self._tb = None
        self._resume_step = resume_step
        self._written: set[str] = set()  # metric names already in the file at resume_step
        if not self.active:
            return
        for row in truncate_metrics(self.path, resume_step):
            if row['step'] == resume_step:
                self._written.update(row)
        from tensorboardX import SummaryWriter

        _quiet_event_thread_errors()
        self._tb = SummaryWriter(workdir, flush_secs=30)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Writes one line (flushed, so a kill never leaves it half-written in the buffer)."""
        if not self.active:
            return
        if step == self._resume_step:
            metrics = {k: v for k, v in metrics.items() if k not in self._written}
        if not metrics:
            return
        row = {'step': int(step), **{k: float(v) for k, v in sorted(metrics.items())}}
        try:
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')
        except OSError as e:
            e.filename = e.filename or self.path  # A failed flush names no file.
            raise
        self._check_events()
        for k, v in row.items():
            if k != 'step':
                self._tb.add_scalar(k, v, step)

    def _check_events(self) -> None:
        """Raises the OSError that stopped tensorboardX's writer thread (a full or read-only
        disk), if it stopped: its queue would then fill and block the run forever."""
        worker = getattr(getattr(self._tb.file_writer, 'event_writer', None), '_worker', None)
        if worker is not None and not worker.is_alive():
            self._tb = None  # Never touched again: closing it would block on its queue too.
            error = getattr(worker, 'resjax_error', None)
            raise error or OSError(f'TensorBoard event writer in {self._workdir} stopped')

    def close(self) -> None:
        """Flushes and closes the TensorBoard file. A failure to flush it (a full or read-only
        disk) is one warning, not an error: metrics.jsonl is the record, and the run's own
        error, if any, is the one to report."""
        if self._tb is not None:
            try:
                self._check_events()
                self._tb.close()
            except OSError as e:
                logging.warning('TensorBoard events in %s not flushed: %s', self._workdir, e)
            self._tb = None


def _quiet_event_thread_errors() -> None:
    """tensorboardX writes event files on a thread of its own; an OSError there (full disk)
    would print a traceback. The error is kept on the thread instead, for the run's next
    write to raise (`MetricWriter._check_events`): one line from the loop, no traceback."""
    if getattr(threading.excepthook, 'resjax', False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and 'tensorboardX' in str(type(args.thread)):
            args.thread.resjax_error = args.exc_value
        else:
            previous(args)

    hook.resjax = True
    threading.excepthook = hook


def truncate_metrics(path: str, keep_up_to_step: int) -> list[dict]:
    """Drops rows after `keep_up_to_step` (and a torn last line) from a metrics file,
    atomically; returns the rows kept.

    On resume from a checkpoint at step k, rows for steps > k were written by the killed run
    and will be written again: keeping them would duplicate steps. Raises ValueError (one
    line) for a malformed row other than a torn last line, before changing anything.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.readlines()
    rows = [r for r in _read_rows(path, allow_torn_end=True) if r['step'] <= keep_up_to_step]
    if len(rows) == len(lines) and (not lines or lines[-1].endswith('\n')):
        return rows  # Nothing to drop: the file stays as it is.
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    os.replace(tmp, path)
    return rows


def read_metrics(workdir: str, allow_torn_end: bool = False) -> list[dict[str, float]]:
    """All rows of `<workdir>/metrics.jsonl`, in file order.

    Raises FileNotFoundError if there is none and ValueError naming the first malformed line
    (not a JSON object with an integer `step`). `allow_torn_end` skips a last line cut short
    by a kill (no newline), which a resumed run drops.
    """
    return _read_rows(os.path.join(workdir, 'metrics.jsonl'), allow_torn_end)


def _read_rows(path: str, allow_torn_end: bool) -> list[dict]:
    with open(path) as f:
        lines = f.readlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get('step'), int):
                raise ValueError('not an object with an integer "step"')
        except ValueError as e:
            if allow_torn_end and number == len(lines) and not line.endswith('\n'):
                break  # A line torn by a kill.
            raise ValueError(
                f'{path} line {number} is not a metrics row ({str(e).splitlines()[0][:80]}): '
                f'{line.strip()[:60]!r}; repair or delete that line'
            ) from None
        rows.append(row)
    return rows


def mean_metrics(rows: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Averages per-step metric dicts (fetched from the device in one transfer)."""
    rows = jax.device_get(rows)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
