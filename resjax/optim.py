"""The optimizer: SGD with momentum and weight decay, with the paper's schedules (optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resjax import models

# Parameters that weight decay leaves alone, by leaf name: the per-channel a and b of a
# Dirac-parametrised conv (DiracNets decay W only, so that the identity a·δ costs nothing).
NO_WEIGHT_DECAY = frozenset(models.DIRAC_PARAMS)


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate per step for `config.train`.

    'piecewise': lr, multiplied by `lr_decay_factor` at each fraction of `steps` in
    `lr_boundaries` (the paper: x0.1 at 32k and 48k of 64k). 'cosine': cosine decay to 0 over
    the steps after warm-up. 'constant': lr. Warm-up ('linear' ramp from 0, or 'constant' at
    lr/10 as for the paper's ResNet-110) covers the first `warmup_steps`.
    """
    if train.schedule == 'piecewise':
        boundaries = {round(f * train.steps): train.lr_decay_factor for f in train.lr_boundaries}
        main = optax.piecewise_constant_schedule(train.lr, boundaries)
    elif train.schedule == 'cosine':
        main = optax.cosine_decay_schedule(train.lr, max(1, train.steps - train.warmup_steps))
    elif train.schedule == 'constant':
        main = optax.constant_schedule(train.lr)
    else:
        raise ValueError(
            f'train.schedule={train.schedule!r} is unknown; use piecewise, cosine or constant'
        )
    if not train.warmup_steps:
        return main
    if train.warmup == 'linear':
        warm = optax.linear_schedule(0.0, train.lr, train.warmup_steps)
    elif train.warmup == 'constant':
        warm = optax.constant_schedule(train.lr / 10)
    else:
        raise ValueError(f'train.warmup={train.warmup!r} is unknown; use linear or constant')
    # Piecewise boundaries count from step 0, as in the paper; cosine starts after warm-up.
    offset = train.warmup_steps if train.schedule == 'cosine' else 0
    return lambda step: jnp.where(
        step < train.warmup_steps, warm(step), main(jnp.maximum(step - offset, 0))
    )


def decayed_weights(
    weight_decay: float, exclude: frozenset[str] = NO_WEIGHT_DECAY
) -> optax.GradientTransformation:
    """`optax.add_decayed_weights(weight_decay)` (adds `weight_decay * w` to each update) on
    every leaf but those whose name (last path key) is in `exclude`, whose updates pass through
    unchanged. Its state is the unmasked transformation's own, and with no such leaf its
    updates are the same arrays, so models without them train and checkpoint as before."""
    decay = optax.add_decayed_weights(weight_decay)

    def update(updates, state, params=None):
        decayed, state = decay.update(updates, state, params)
        keep = lambda path, d, g: g if getattr(path[-1], 'key', None) in exclude else d
        return jax.tree_util.tree_map_with_path(keep, decayed, updates), state

    return optax.GradientTransformation(decay.init, update)


def create_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and weight decay on every parameter except the Dirac
    scales a and b (`NO_WEIGHT_DECAY`; only Dirac-parametrised models have them).

    `weight_decay_mode='l2'` adds `weight_decay * w` to the gradient before momentum, which is
    what the paper's Caffe solver (and PyTorch's SGD) does: an L2 penalty of
    `weight_decay / 2 * ||w||^2` that is not part of the logged or probed loss.
    `'decoupled'` adds `weight_decay * w` to the momentum output instead (Loshchilov & Hutter),
    so the decay is scaled by the learning rate but not accumulated in the momentum.
    """
    schedule = learning_rate_schedule(train)
    momentum = optax.trace(decay=train.momentum, nesterov=train.nesterov)
    decay = decayed_weights(train.weight_decay)
    if train.weight_decay_mode == 'l2':
        chain = [decay, momentum]
    elif train.weight_decay_mode == 'decoupled':
        chain = [momentum, decay]
    else:
        raise ValueError(
            f'train.weight_decay_mode={train.weight_decay_mode!r} is unknown; use l2 or decoupled'
        )
    return optax.chain(*chain, optax.scale_by_learning_rate(schedule))
