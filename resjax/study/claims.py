"""Locks that let several study processes share one study workdir.

Each lives in `<workdir>/.locks/` and is an advisory `flock` (`resjax.workdir.try_lock`), so a
killed process never leaves one behind:
- `<run name>.lock`: the study process training that run holds it (its claim on the run);
- `study.lock`: the process that inspects the final checkpoints and writes the report;
- `status.lock`: held for the moment a process updates `status.json`.
A run also counts as held while a plain `train.py` holds the run's own workdir lock (a run
started from `study.py --list`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from typing import IO

from resjax import plots
from resjax import workdir as workdir_lib
from resjax.study.grid import RunSpec, load_status

LOCKS_DIR = '.locks'


def _path(workdir: str, name: str) -> str:
    os.makedirs(os.path.join(workdir, LOCKS_DIR), exist_ok=True)
    return os.path.join(workdir, LOCKS_DIR, name + '.lock')


def _holder_of(path: str) -> str:
    """Who holds the flock on `path` ('' if nobody or no such file), found by taking it for
    an instant without writing anything."""
    try:
        handle = open(path)
    except FileNotFoundError:
        return ''
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return handle.read().strip() or 'another process'
    return ''


def holder(workdir: str, spec: RunSpec) -> str:
    """Who holds `spec` now ('pid N on HOST': a study process's claim, or a training run's
    workdir lock), or '' if nobody does. A probe: the answer may change at once."""
    return _holder_of(_path(workdir, spec.name)) or _holder_of(
        os.path.join(spec.workdir, workdir_lib.LOCK_FILE)
    )


@contextlib.contextmanager
def claim(workdir: str, spec: RunSpec) -> Iterator[bool]:
    """Claims `spec` for this process for the duration; yields False (and holds nothing) if
    another process has claimed it."""
    handle, _ = workdir_lib.try_lock(_path(workdir, spec.name))
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.close()


def study_lock(workdir: str, wait: bool) -> tuple[IO | None, str]:
    """The lock of the study's own phase (inspection and report): (handle, '') when taken, or
    (None, holder) if another process holds it and `wait` is False. Close the handle to
    release it."""
    return workdir_lib.try_lock(_path(workdir, 'study'), wait=wait)


def record_run(workdir: str, name: str, state: str, seconds: float) -> None:
    """Adds `seconds` of training to run `name` in `status.json` and sets its state, under a
    lock: several processes update the file, each its own runs."""
    handle, _ = workdir_lib.try_lock(_path(workdir, 'status'), wait=True)
    try:
        status = load_status(workdir)
        entry = status.setdefault(name, {'seconds': 0.0})
        entry['seconds'] = round(entry.get('seconds', 0.0) + seconds, 1)
        entry['state'] = state
        plots.write_json(os.path.join(workdir, 'status.json'), status)
    finally:
        handle.close()
