"""Data parallelism: a 1-D device mesh over every device of every process, batch sharded
along 'data', parameters and optimizer state replicated (jit mode)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
    """A 1-D mesh named 'data' over all global devices."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def check_batch_sizes(global_batch: int, eval_batch: int) -> None:
    """Raises ValueError if a global batch cannot be split evenly over the devices."""
    n = jax.device_count()
    for key, value in (('batch_size', global_batch), ('eval_batch_size', eval_batch)):
        if value % n:
            raise ValueError(
                f'train.{key}={value} does not divide by the {n} devices; pick a multiple of {n}'
            )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's local slice, sharded along 'data'."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
