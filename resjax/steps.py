"""Pure train and eval step functions. `resjax.train` compiles and runs them.

The loss everywhere is the MEAN softmax cross-entropy over the (global) batch; weight decay is
part of the optimizer, not of this loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds, so a resumed run continues bit for bit.

    `step` is also the data position (batches are a function of seed and step).
    `nonfinite_step` is -1, or the first step whose loss or gradient was not finite, and
    `nonfinite_layer` the index (in sorted layer order) of the first layer whose gradient was.
    `skipped_steps` counts updates skipped for non-finite values (`train.on_nonfinite='skip'`).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    nonfinite_step: jax.Array
    nonfinite_layer: jax.Array
    skipped_steps: jax.Array


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...], seed: int
) -> TrainState:
    """Initialises parameters (He normal), BN statistics and optimizer state from `seed`."""
    init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables['params']
    return TrainState(
        step=jnp.array(0, jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        rng=rng,
        nonfinite_step=jnp.array(-1, jnp.int32),
        nonfinite_layer=jnp.array(-1, jnp.int32),
        skipped_steps=jnp.array(0, jnp.int32),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (nats), computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def layer_names(params: PyTree) -> list[str]:
    """'/'-joined paths of the layers (dicts holding a 'kernel'), sorted = forward order."""
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    return sorted(k.rsplit('/', 1)[0] for k in flat if k.endswith('/kernel'))


def per_layer(params: PyTree, fn: Callable[[jax.Array], jax.Array]) -> dict[str, jax.Array]:
    """Applies `fn` to the concatenation of each layer's leaves (kernel, bias, BN scale/shift
    belong to the layer that holds them: 'x/conv' and 'x/norm/bn' are separate layers)."""
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in flat.items():
        groups.setdefault(path.rsplit('/', 1)[0], []).append(leaf)
    return {k: fn(v) for k, v in sorted(groups.items())}


def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    on_nonfinite: str = 'stop',
    axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns `train_step(state, batch) -> (state, metrics)`, pure and un-jitted.

    BN runs in training mode on the batch; its running statistics are updated once. Gradients
    come from one explicit `jax.value_and_grad` of the mean loss. Under pmap (`axis_name` set),
    loss and gradients are averaged over devices. A non-finite loss or gradient never reaches
    the parameters: the update is skipped and recorded in the state (`on_nonfinite='stop'`
    makes the loop stop at its next check; 'skip' counts and continues).
    """

    def loss_fn(params, batch_stats, batch):
        logits, new_vars = model.apply(
            {'params': params, 'batch_stats': batch_stats},
            batch['image'],
            train=True,
            mutable=['batch_stats'],
        )
        loss = jnp.mean(cross_entropy(logits, batch['label']))
        return loss, (logits, new_vars.get('batch_stats', {}))

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
        if axis_name is not None:
            loss, accuracy, grads = jax.lax.pmean((loss, accuracy, grads), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        layer_finite = jnp.stack(list(per_layer(grads, _all_finite).values()))
        finite = jnp.isfinite(loss) & jnp.all(layer_finite)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        first_bad = (state.nonfinite_step < 0) & ~finite
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            batch_stats=keep(batch_stats, state.batch_stats),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
            nonfinite_layer=jnp.where(first_bad, jnp.argmin(layer_finite), state.nonfinite_layer),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        )
        metrics = {
            'train/loss': loss,
            'train/accuracy': accuracy,
            'lr': schedule(state.step),
            'grad_norm/global': optax.tree.norm(grads),
        }
        if on_nonfinite == 'skip':
            metrics['train/skipped_steps'] = new_state.skipped_steps
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, dict], dict]:
    """Returns `eval_step(state, batch) -> sums`: BN in eval mode (running statistics);
    `loss_sum`, `correct` and `count` are sums over the unmasked examples of the batch."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        logits = model.apply(
            {'params': state.params, 'batch_stats': state.batch_stats},
            batch['image'],
            train=False,
        )
        mask = batch['mask']
        return {
            'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
            'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
            'count': jnp.sum(mask),
        }

    return eval_step
