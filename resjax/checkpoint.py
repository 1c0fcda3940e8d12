"""Checkpoints through orbax's CheckpointManager: atomic saves (a step directory is visible
only once finalised), keep the last K, restore onto an abstract state with its shardings.

A save killed midway leaves `<step>.orbax-checkpoint-tmp`, which orbax never lists as a step;
a writable manager deletes such leftovers when it opens (docs/notes.md, orbax).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_manager(
    workdir: str, keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
    """A manager for `<workdir>/checkpoints`. `read_only` never creates or deletes anything
    (inspection uses it while training may still be writing)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,  # Unfinalised saves of a killed run.
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
    )


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored onto the requested state (one-line message)."""


def save(manager: ocp.CheckpointManager, state: Any) -> None:
    """Saves `state` at its own step (asynchronously; `manager.wait_until_finished()` to block)."""
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the checkpoint at `step` (default: the latest) onto `abstract_state`'s
    structure, dtypes and shardings (e.g. `jax.eval_shape` output with shardings attached).

    Raises CheckpointError naming the step directory if it is damaged or holds another model
    (orbax and TensorStore raise untyped errors for both); FileNotFoundError passes through
    (a step deleted while it was read, e.g. by a training run's `keep`).
    """
    step = manager.latest_step() if step is None else step
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (ValueError, TensorStore's bare Exception, ...)
        path = os.path.join(str(manager.directory), str(step))
        older = [s for s in manager.all_steps() if s < step]
        fix = f'delete it to resume from step {older[-1]}' if older else 'delete it'
        reason = f'{type(e).__name__}: {str(e).strip()}'.splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be restored onto this config's state ({reason}); if the "
            f'checkpoint is damaged {fix}, if the config differs use its own workdir'
        ) from e
