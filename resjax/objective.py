"""The objective resjax trains and probes: softmax cross-entropy, its BatchNorm mode, masking.

The loss is the MEAN softmax cross-entropy in nats over a batch's real examples, without weight
decay (that belongs to the optimizer), computed in float32 (float64 logits keep their own).
BatchNorm has two modes (`BN_MODES`, `probes.bn_mode`, inspection's `--bn_mode`):

- 'train': the batch's own statistics; the running statistics it would update are discarded
  (the training step keeps them: `steps`), so a probe never changes the model;
- 'eval': the running statistics, a fixed function of the parameters (the deployed network).

A padded batch (`resjax.data.padded_batches`) marks its real examples with `mask` 1.0 and its
padding with 0.0; a masked mean is sum(loss * mask) / sum(mask). The unmasked mean is
`jnp.mean`; the two are kept apart because their float32 rounding is not the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
BN_MODES = ('train', 'eval')


def check_bn_mode(bn_mode: str, name: str = 'bn_mode') -> None:
    """Raises ValueError (one line, naming the setting `name`) unless `bn_mode` is in BN_MODES."""
    if bn_mode not in BN_MODES:
        raise ValueError(f'{name}={bn_mode!r} is unknown; use one of {BN_MODES}')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (nats) of integer `labels`, computed in float32 (or
    float64 logits' own dtype)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def mean_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """The mean cross-entropy (nats): `jnp.mean` without `mask`, sum(ce * mask) / sum(mask)
    with one (padding excluded)."""
    per_example = cross_entropy(logits, labels)
    if mask is None:
        return jnp.mean(per_example)
    return jnp.sum(per_example * mask) / jnp.sum(mask)


def logits(model: nn.Module, variables: PyTree, images: jax.Array, bn_mode: str) -> jax.Array:
    """The model's logits on `images` at `variables` ({'params', 'batch_stats'}), BN in
    `bn_mode` ('train': the batch's own statistics, the updated running ones discarded;
    'eval': the running statistics)."""
    if bn_mode == 'train':
        return model.apply(variables, images, train=True, mutable=['batch_stats'])[0]
    return model.apply(variables, images, train=False)


@functools.cache
def mean_loss(model: nn.Module, bn_mode: str = 'train') -> Callable[..., jax.Array]:
    """`loss(params, batch, batch_stats)`: the mean cross-entropy over `batch` (masked by
    `batch['mask']` if present), BN in `bn_mode`; in neither mode does it change
    `batch_stats`. One function per (model, bn_mode), so every user shares its compiles."""
    check_bn_mode(bn_mode)

    def loss(params, batch, batch_stats):
        out = logits(model, {'params': params, 'batch_stats': batch_stats}, batch['image'], bn_mode)
        return mean_cross_entropy(out, batch['label'], batch.get('mask'))

    return loss


@functools.cache
def loss_and_accuracy(model: nn.Module, bn_mode: str) -> Callable[[dict, dict], dict]:
    """`f(variables, batch) -> {'loss', 'accuracy'}`: the masked mean cross-entropy (nats) and
    the fraction correct over `batch` (all of it without `mask`) at `variables`
    ({'params', 'batch_stats'}), BN in `bn_mode` (running statistics never updated): the loss
    of the landscape probes. One function per (model, BN mode), so its users share compiles."""
    check_bn_mode(bn_mode)

    def f(variables, batch):
        out = logits(model, variables, batch['image'], bn_mode)
        mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
        correct = (jnp.argmax(out, -1) == batch['label']).astype(jnp.float32)
        return {
            'loss': mean_cross_entropy(out, batch['label'], mask),
            'accuracy': jnp.sum(correct * mask) / jnp.sum(mask),
        }

    return f


def eval_sums(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """`loss_sum` (nats), `correct` and `count`: sums over the unmasked examples of `batch`,
    to be added over batches (and devices) before dividing."""
    mask = batch['mask']
    return {
        'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
        'count': jnp.sum(mask),
    }


def recomputed_batch_stats(model: nn.Module, params: PyTree, images: jax.Array) -> PyTree:
    """BatchNorm running statistics recomputed at `params`: for every BatchNorm layer the
    exact mean and (biased) variance of its input over all examples and pixels of `images`
    (float32), the layers before it normalised by their own recomputed statistics: what a
    training-mode forward pass over `images` as one batch uses, so eval mode with these
    statistics is that pass's function (Frankle et al. 2020 reset BN after interpolating).
    Not an EMA. A model without BatchNorm gives {}."""
    if getattr(model, 'scan_blocks', False):  # The same parameter tree; a scan hides its calls.
        model = model.clone(scan_blocks=False)
    stats = {}

    def grab(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
            x = jnp.asarray(args[0], jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            stats[context.module.path + ('mean',)] = mean
            stats[context.module.path + ('var',)] = jnp.mean(jnp.square(x - mean), axes)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        model.apply({'params': params}, images, train=True, mutable=['batch_stats'])
    return flax.traverse_util.unflatten_dict(stats)


@functools.cache
def loss_and_accuracy_recomputed(model: nn.Module) -> Callable[[dict, dict, jax.Array], dict]:
    """`f(variables, batch, bn_images) -> {'loss', 'accuracy'}`: `loss_and_accuracy(model,
    'eval')` at `variables['params']` with the BatchNorm statistics recomputed on `bn_images`
    (`recomputed_batch_stats`; `variables['batch_stats']` is not read), so a point between two
    nets is scored as the function its parameters compute. One function per model."""
    f = loss_and_accuracy(model, 'eval')

    def g(variables, batch, bn_images):
        stats = recomputed_batch_stats(model, variables['params'], bn_images)
        return f({'params': variables['params'], 'batch_stats': stats}, batch)

    return g
