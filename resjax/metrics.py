"""Metric writing: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

TensorBoard files come from tensorboardX, which needs no TensorFlow (CLU's writers import
TensorFlow at import time; see docs/notes.md). Only process 0 writes."""

from __future__ import annotations

import json
import os

import jax
import numpy as np


class MetricWriter:
    """Appends `{"step": int, name: float, ...}` lines to metrics.jsonl and scalars to TB."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if not self.active:
            return
        truncate_metrics(self.path, resume_step)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(workdir, flush_secs=30)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Writes one line (flushed, so a kill never leaves it half-written in the buffer)."""
        if not self.active or not metrics:
            return
        row = {'step': int(step), **{k: float(v) for k, v in sorted(metrics.items())}}
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')
        for k, v in row.items():
            if k != 'step':
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: str, keep_up_to_step: int) -> None:
    """Drops rows after `keep_up_to_step` (and a torn last line) from a metrics file, atomically.

    On resume from a checkpoint at step k, rows for steps > k were written by the killed run
    and will be written again: keeping them would duplicate steps.
    """
    if not os.path.exists(path):
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # A line torn by a kill.
            if row['step'] <= keep_up_to_step:
                rows.append(line if line.endswith('\n') else line + '\n')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.writelines(rows)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All rows of `<workdir>/metrics.jsonl`, in file order."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_metrics(rows: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Averages per-step metric dicts (fetched from the device in one transfer)."""
    rows = jax.device_get(rows)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
