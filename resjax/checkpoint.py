"""Checkpoints through orbax's CheckpointManager: atomic saves (a step directory is visible
only once finalised), keep the last K, restore onto an abstract state with its shardings.

A save killed midway leaves `<step>.orbax-checkpoint-tmp`, which orbax never lists as a step;
a writable manager deletes such leftovers when it opens (docs/notes.md, orbax).

orbax keeps no checksums, so a flipped bit in an array file restores as a wrong number. `save`
writes a CRC-32 of every array into the step's own metadata (committed atomically with it) and
`restore` checks them, and that the state is finite: a damaged checkpoint is an error naming it,
never a run that resumes from garbage.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKSUMS_KEY = 'resjax_crc32'
SPACE_MARGIN = 1.25  # Free space a save needs, over the last checkpoint's size on disk.


def checkpoint_manager(
    workdir: str, keep: int = 3, read_only: bool = False, subdir: str = 'checkpoints'
) -> ocp.CheckpointManager:
    """A manager for `<workdir>/<subdir>` (`checkpoints`, or `construct.START_DIR`).
    `read_only` never creates or deletes anything (inspection uses it while training may still
    be writing)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # Unfinalised saves of a killed run.
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), subdir), options=options)


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored onto the requested state (one-line message)."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (one-line message: where, why, how much space)."""


def checksums(state: Any) -> dict[str, str]:
    """CRC-32 (hex) of each array's bytes, keyed by its tree path (`jax.tree_util.keystr`)."""
    return {name: _crc32(x) for name, x in _host_leaves(state)}


def _crc32(x: np.ndarray) -> str:
    return f'{zlib.crc32(x.reshape(-1).view(np.uint8)):08x}'


def _host_leaves(state: Any) -> list[tuple[str, np.ndarray]]:
    """(path, contiguous host copy) of each leaf, in one device-to-host transfer. resjax's
    states are replicated, so every process reads its local copy."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    local = [x.addressable_data(0) if isinstance(x, jax.Array) else x for _, x in flat]
    host = jax.device_get(local)
    return [
        (jax.tree_util.keystr(path), np.ascontiguousarray(x))
        for (path, _), x in zip(flat, host, strict=True)
    ]


def save(manager: ocp.CheckpointManager, state: Any, metadata: dict | None = None) -> None:
    """Saves `state` at its own step, with its checksums and any JSON `metadata` (read back by
    `saved_metadata`), asynchronously (errors surface in `check_saved`).

    Raises SaveError before writing anything if the disk has less free space than the last
    checkpoint takes on it (or the state's size, for the first): a save that cannot fit is not
    started.
    """
    # orbax finishes the previous save before it starts one: wait here, so that its error (if
    # any) is ours to report and its size on disk is known.
    check_saved(manager)
    step = int(jax.device_get(state.step))
    directory = str(manager.directory)
    # A margin over the last one's size: a save also writes metadata and temporary files.
    needed = max(_latest_on_disk(manager), sum(x.nbytes for x in jax.tree.leaves(state)))
    needed = int(needed * SPACE_MARGIN)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise SaveError(_no_space(directory, step, needed, free))
    try:
        manager.save(
            step,
            args=ocp.args.StandardSave(state),
            force=True,
            custom_metadata={**(metadata or {}), CHECKSUMS_KEY: checksums(state)},
        )
    except Exception as e:  # noqa: BLE001  (orbax raises OSError, TensorStore's ValueError, ...)
        raise _save_error(manager, e) from e


def check_saved(manager: ocp.CheckpointManager) -> None:
    """Waits for the background save in progress, if any; raises SaveError (one line, naming
    the directory and the space needed if the disk is full) if it failed, after removing what
    it left.

    orbax's non-blocking `check_for_errors` does not see a failure of the save's finalize
    thread (docs/notes.md, orbax), so a failed save is found only by waiting for it.
    """
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001  (orbax re-raises the save thread's error as is)
        raise _save_error(manager, e) from e


def _save_error(manager: ocp.CheckpointManager, error: Exception) -> SaveError:
    """The one-line SaveError for a save that failed, after removing what it left."""
    directory = str(manager.directory)
    for tmp in glob.glob(os.path.join(directory, '*.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    # TensorStore reports a full disk as a ValueError: RESOURCE_EXHAUSTED.
    full = cause is not None and cause.errno == errno.ENOSPC
    if full or any(s in str(error) for s in ('No space left', 'RESOURCE_EXHAUSTED')):
        free = shutil.disk_usage(directory).free
        last = _latest_on_disk(manager)
        return SaveError(
            f'no space left while saving a checkpoint in {directory} ({_size(free)} free '
            f'now, the last checkpoint takes {_size(last)}); free space and rerun the same '
            'command to resume from the last saved step'
        )
    reason = f'{type(error).__name__}: {str(error).strip()}'.splitlines()[0][:200]
    return SaveError(f'a checkpoint save in {directory} failed ({reason})')


def saved_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
    """The `metadata` saved with `step` by `save` (without the checksums)."""
    saved = dict(manager.metadata(step).custom_metadata or {})
    saved.pop(CHECKSUMS_KEY, None)
    return saved


def _latest_on_disk(manager: ocp.CheckpointManager) -> int:
    """Bytes the latest finished checkpoint takes on disk (file-system blocks, metadata
    included): what the next one needs. 0 if there is none."""
    latest = manager.latest_step()
    on_disk = 0
    if latest is not None:
        for directory, _, names in os.walk(os.path.join(str(manager.directory), str(latest))):
            on_disk += sum(os.stat(os.path.join(directory, n)).st_blocks * 512 for n in names)
    return on_disk


def _size(n: int) -> str:
    return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n / 2**10:.0f} KiB'


def _no_space(directory: str, step: int, needed: int, free: int) -> str:
    return (
        f'no space left to save checkpoint {step} in {directory}: it needs about '
        f'{_size(needed)}, {_size(free)} are free; free space and rerun the same command to '
        'resume from the last saved step'
    )


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the checkpoint at `step` (default: the latest) onto `abstract_state`'s
    structure, dtypes and shardings (e.g. `jax.eval_shape` output with shardings attached).

    Raises CheckpointError naming the step directory if it is damaged or holds another model
    (orbax and TensorStore raise untyped errors for both); FileNotFoundError passes through
    (a step deleted while it was read, e.g. by a training run's `keep`).
    """
    step = manager.latest_step() if step is None else step
    path = os.path.join(str(manager.directory), str(step))
    older = [s for s in manager.all_steps() if s < step]
    fix = f'delete it to resume from step {older[-1]}' if older else 'delete it'
    try:
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        saved = manager.metadata(step).custom_metadata or {}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (ValueError, TensorStore's bare Exception, ...)
        _drop_sibling_read_errors()
        reason = str(e).strip().split('. See full TensorStore details')[0]
        reason = f'{type(e).__name__}: {reason}'.splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be restored onto this config's state ({reason}); if the "
            f'checkpoint is damaged {fix}, if the config differs use its own workdir'
        ) from e
    leaves = _host_leaves(state)
    expected = saved.get(CHECKSUMS_KEY)  # Absent in checkpoints written before checksums.
    if expected:
        actual = {name: _crc32(x) for name, x in leaves}
        bad = [k for k in expected if actual.get(k) != expected[k]]
        if bad:
            raise CheckpointError(
                f'checkpoint {path} is damaged: {len(bad)} array(s) differ from the checksums '
                f'saved with them (first: state{bad[0]}); {fix}'
            )
    nonfinite = [
        name
        for name, x in leaves
        if jnp.issubdtype(x.dtype, jnp.inexact) and not np.isfinite(x.astype(np.float64)).all()
    ]
    if nonfinite:
        raise CheckpointError(
            f'checkpoint {path} holds non-finite values (first: state{nonfinite[0]}), so it is '
            f'damaged (a saved state is always finite); {fix}'
        )
    return state


def _drop_sibling_read_errors() -> None:
    """orbax reads arrays in concurrent coroutines: after the first failure, the others that
    failed too print "Exception ignored in <coroutine ...>" tracebacks when they are collected.
    They repeat the error being raised; collect them now, silently."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


@contextlib.contextmanager
def held_step(workdir: str, step: int) -> Iterator[str]:
    """A private snapshot of `<workdir>/checkpoints/<step>` that a training run deleting old
    steps cannot take away mid-read: yields a temporary workdir holding only that step, as hard
    links (a copy across file systems), removed on exit. Nothing is written in `workdir`.

    Raises FileNotFoundError if the step disappears before it is held.
    """
    source = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step))
    held = tempfile.mkdtemp(prefix='resjax-held-')
    try:
        try:
            shutil.copytree(
                source, os.path.join(held, 'checkpoints', str(step)), copy_function=_link_or_copy
            )
        except (shutil.Error, FileNotFoundError) as e:
            raise FileNotFoundError(f'{source} disappeared while it was held') from e
        yield held
    finally:
        shutil.rmtree(held, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)
