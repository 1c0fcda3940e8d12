"""A training workdir's guards: one run at a time, and nothing changed until a run can start.

`check(config, workdir)` reads (never writes) what a resumed run depends on: config.json (it
must parse and describe the same model) and metrics.jsonl (every row must parse). `lock` then
makes the run the workdir's only writer; `write_config` records the config once the checkpoint
has been restored. Each failure is a `WorkdirError` with a one-line message naming the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from typing import IO

import jax
import ml_collections
import numpy as np

from resjax import config_lib, metrics

LOCK_FILE = '.lock'


class WorkdirError(ValueError):
    """A workdir a run must not use as it is (one-line message naming the fix)."""


def check(
    config: ml_collections.ConfigDict, workdir: str, resume_critical: tuple[str, ...]
) -> None:
    """Creates `workdir` if needed and refuses it if it cannot hold this run.

    Refused: an unwritable directory, config.json or metrics.jsonl; a config.json that does not
    parse; one whose
    `resume_critical` keys differ from `config`'s (unless `train.allow_config_change`); a
    metrics.jsonl with a malformed row. Writes nothing else.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_test.{jax.process_index()}')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(
            f'workdir {workdir!r} is not writable ({e.strerror}); pick another'
        ) from None
    for name in ('config.json', 'metrics.jsonl'):
        path = os.path.join(workdir, name)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise WorkdirError(
                f'{path} is not writable (a read-only file or mount); make it writable to '
                'resume, or use another workdir'
            )
    path = os.path.join(workdir, 'config.json')
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError('not a JSON object')
        except (OSError, ValueError) as e:
            raise WorkdirError(
                f'{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); restore '
                'it, or delete it to resume with this config'
            ) from None
        if not config.train.allow_config_change:
            new = json.loads(config.to_json_best_effort())
            defaults = json.loads(config_lib.default_config().to_json_best_effort())
            for key in resume_critical:
                # A key the run's config.json predates had its default value then.
                a = _get(old, key) if _has(old, key) else _get(defaults, key)
                b = _get(new, key)
                if a != b:
                    raise WorkdirError(
                        f'workdir {workdir!r} holds a run with {key}={a}, this config has {b}; '
                        'use another workdir or --config.train.allow_config_change=True'
                    )
    try:
        metrics.read_metrics(workdir, allow_torn_end=True)
    except FileNotFoundError:
        pass
    except ValueError as e:
        raise WorkdirError(str(e)) from None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to `<workdir>/config.json` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, 'config.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds `<workdir>/.lock` for the duration: a second run on the workdir is refused.

    An advisory `flock` that the kernel drops when its process dies, so a run killed by
    preemption or SIGKILL leaves no stale lock. The file names the holder (host, pid) for the
    refusal message. In a multi-host run process 0 holds it and tells the others; a shared
    filesystem must support flock across hosts for runs started on different machines.
    """
    handle, holder = None, ''
    if jax.process_index() == 0:
        handle, holder = try_lock(os.path.join(workdir, LOCK_FILE))
    busy = handle is None if jax.process_index() == 0 else False
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
    if busy:
        raise WorkdirError(
            f'workdir {workdir!r} is in use by {holder or "another run (see process 0)"}; wait '
            'for it to finish or stop it, or use another workdir'
        )
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # Releases the flock.


def is_locked(workdir: str) -> bool:
    """Whether a run holds `workdir` now (`lock`), tested without writing anything there."""
    try:
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return False  # No lock file: no run ever held it.
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # Releases the shared lock, if taken.


def try_lock(path: str, wait: bool = False) -> tuple[IO | None, str]:
    """Takes an exclusive advisory `flock` on `path` (created if missing) for this process.

    Returns (the open file, which holds the lock until closed, '') or, if another process holds
    it and `wait` is False, (None, the holder as it wrote itself: 'pid N on HOST'). The kernel
    drops the lock when its holder dies, so a killed process never leaves a stale lock.
    """
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            handle.close()
            raise
        handle.seek(0)
        holder = handle.read().strip() or 'another process'
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    handle.flush()
    return handle, ''


def _has(tree: dict, dotted: str) -> bool:
    """Whether the nested dict `tree` holds the '.'-joined key `dotted`."""
    for k in dotted.split('.'):
        if not isinstance(tree, dict) or k not in tree:
            return False
        tree = tree[k]
    return True


def _get(tree: dict, dotted: str):
    for k in dotted.split('.'):
        tree = tree.get(k, {}) if isinstance(tree, dict) else None
    return tree
