"""Checkpoints through orbax's CheckpointManager: atomic saves (a step directory is visible
only once finalised), keep the last K, restore onto an abstract state with its shardings."""

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
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
    )


def save(manager: ocp.CheckpointManager, state: Any) -> None:
    """Saves `state` at its own step (asynchronously; `manager.wait_until_finished()` to block)."""
    manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
    """Restores the checkpoint at `step` (default: the latest) onto `abstract_state`'s
    structure, dtypes and shardings (e.g. `jax.eval_shape` output with shardings attached)."""
    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
