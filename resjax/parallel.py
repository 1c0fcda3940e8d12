"""Data parallelism: two wrappers around the one step function of `resjax.steps`.

- `jit` (default): one global 1-D mesh named 'data' over every device of every process. The
  global batch is assembled from each process's local slice and sharded along 'data';
  parameters, BN statistics and optimizer state are replicated. The step is one program over
  the global batch, so BatchNorm statistics are those of the GLOBAL batch.
- `pmap`: `jax.pmap` over the same devices with axis name 'data'. Each device runs the step on
  its slice (local batch reshaped to (local devices, per device, ...)); loss, accuracy and
  gradients are averaged over devices (`pmean`). BatchNorm statistics are PER DEVICE, as in
  the ResNet paper's multi-GPU ImageNet runs, unless `parallel.sync_bn` gives the model the
  axis name. The state is replicated along a leading axis of local devices. Running BN
  statistics would drift apart per device; after every step all devices take device 0's (what
  PyTorch's DataParallel and Caffe's multi-GPU solver did), so the replicas stay identical and
  a checkpoint (replica 0) holds exactly the state every device has.

Multi-host: `initialize_distributed` starts `jax.distributed` before any computation; each
process then feeds its own slice of the global batch (`resjax.data` shards per process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
MODES = ('jit', 'pmap')
PyTree = Any


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> None:
    """Starts JAX's multi-process runtime; must run before any JAX computation.

    With no arguments the cluster is auto-detected (TPU VM pod slices, SLURM, Open MPI). On CPU
    the cross-process collectives are gloo's (jax 0.10's default; set here if unset).
    """
    if getattr(jax.config, 'jax_cpu_collectives_implementation', 'gloo') in (None, 'none'):
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )
    logging.info(
        'jax.distributed: process %d of %d, %d local / %d global devices',
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def create_mesh() -> Mesh:
    """A 1-D mesh named 'data' over all global devices, ordered by process, then device id.

    That order makes the global batch the concatenation of the processes' local slices in
    process order, i.e. the batch a single process would have read (`resjax.data`).
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_sizes(global_batch: int, eval_batch: int) -> None:
    """Raises ValueError if a global batch cannot be split evenly over the devices."""
    n = jax.device_count()
    for key, value in (('batch_size', global_batch), ('eval_batch_size', eval_batch)):
        if value % n:
            raise ValueError(
                f'train.{key}={value} does not divide by the {n} devices; pick a multiple of {n}'
            )


# ----- jit: global arrays on the mesh -------------------------------------------------------


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's local slice, sharded along 'data'.

    Every process passes its own slice (same size on every process); the global batch is
    `process_count` times as long, the slices in process order.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    count = jax.process_count()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * count, *x.shape[1:])
        ),
        batch,
    )


# ----- pmap: a leading axis of local devices ------------------------------------------------


def split_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's slice reshaped to (local devices, per-device batch, ...) for pmap."""
    n = jax.local_device_count()
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def replicate(tree: PyTree) -> PyTree:
    """One copy of `tree` per local device, stacked on a leading axis (pmap's layout).

    `tree` may hold host arrays or global replicated arrays (jit's layout, e.g. a restored
    checkpoint); each process copies its local value.
    """
    devices = jax.local_devices()
    sharding = NamedSharding(Mesh(np.asarray(devices), (DATA_AXIS,)), PartitionSpec(DATA_AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(np.stack([_local_value(x)] * len(devices)), sharding), tree
    )


def unreplicate(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Replica 0 of a pmap-replicated tree as global arrays with `sharding` (e.g. replicated
    over the mesh): the form checkpoints, evaluation-free probes and jit code expect."""

    def one(x):
        local = first_replica(x)
        return jax.make_array_from_process_local_data(sharding, local, local.shape)

    return jax.tree.map(one, tree)


def first_replica(x: jax.Array) -> np.ndarray:
    """Replica 0 (first local device) of a pmap-replicated array, on the host."""
    return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])


def from_device_0(tree: PyTree, axis_name: str = DATA_AXIS) -> PyTree:
    """Inside pmap: every device gets device 0's value (exact: a sum with zeros)."""
    is_first = jax.lax.axis_index(axis_name) == 0
    return jax.lax.psum(
        jax.tree.map(lambda x: jax.numpy.where(is_first, x, jax.numpy.zeros_like(x)), tree),
        axis_name,
    )


def pmap_train_step(
    train_step: Callable[[Any, dict], tuple[Any, dict]],
) -> Callable[[Any, dict], tuple[Any, dict]]:
    """pmaps `train_step` (built with `axis_name=DATA_AXIS`) over all devices, donating the
    state. After the step every device holds device 0's running BN statistics (module
    docstring); with synchronised BN they are already equal and this changes nothing."""

    def step(state, batch):
        state, metrics = train_step(state, batch)
        return state.replace(batch_stats=from_device_0(state.batch_stats)), metrics

    return jax.pmap(step, axis_name=DATA_AXIS, donate_argnums=0)


def pmap_eval_step(eval_step: Callable[[Any, dict], dict]) -> Callable[[Any, dict], dict]:
    """pmaps `eval_step`, whose outputs are sums over a batch, and sums them over all devices
    (of all processes): every device returns the global sums."""
    return jax.pmap(
        lambda state, batch: jax.lax.psum(eval_step(state, batch), DATA_AXIS), axis_name=DATA_AXIS
    )


def _local_value(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)
