"""Pure train and eval step functions. `resjax.train` compiles and runs them.

The loss is `resjax.objective`'s: the MEAN softmax cross-entropy over the (global) batch;
weight decay is part of the optimizer, not of this loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resjax import objective
from resjax.models.layout import Layout
from resjax.probes import blocks, signals

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


def loss_and_grads(
    model: nn.Module, params: PyTree, batch_stats: PyTree, batch: dict, probes: bool = False
) -> tuple[jax.Array, jax.Array, PyTree, PyTree, PyTree]:
    """One training-mode forward and backward pass of the mean cross-entropy
    (`objective.mean_cross_entropy`, unmasked; `signals.value_and_grads`).

    Returns (loss, logits, new_variables, dL/dparams, dL/dactivations). `new_variables` holds
    the updated 'batch_stats' and, with `probes`, the sown 'intermediates'; the activation
    gradients (w.r.t. the model's zero 'perturbations') are {} without `probes`.
    """
    return signals.value_and_grads(
        model,
        {'params': params, 'batch_stats': batch_stats},
        (batch['image'],),
        lambda logits: objective.mean_cross_entropy(logits, batch['label']),
        observe=probes,
        train=True,
    )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None = None,
    probes: bool = False,
    layout: Layout | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns `train_step(state, batch) -> (state, metrics)`, pure and un-jitted.

    BN runs in training mode on the batch; its running statistics are updated once. Gradients
    come from one explicit `jax.value_and_grad` of the mean loss. Under pmap (`axis_name` set),
    loss and gradients are averaged over devices, and the probes describe the global batch. A
    non-finite loss or gradient never reaches the parameters: the update is skipped and
    recorded in the state (the loop then stops or continues, as `train.on_nonfinite` says).

    With `probes`, the same gradient call also differentiates w.r.t. zero perturbations of
    the activations and returns the sown activations, so the step additionally reports the
    per-layer signals of `resjax.probes.signals` for the parameters *before* this update
    (the update itself is unchanged: probes never change training); the block probes follow
    `layout`'s block order (`resjax.models.layout`; None: the sown names sorted).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        loss, logits, new_vars, grads, act_grads = loss_and_grads(
            model, state.params, state.batch_stats, batch, probes
        )
        batch_stats = new_vars.get('batch_stats', {})
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
        if axis_name is not None:
            loss, accuracy, grads = jax.lax.pmean((loss, accuracy, grads), axis_name)
        # One float32 sum of squares per layer gives both the gradient norm and the finiteness
        # check (a NaN or inf anywhere in a layer makes it non-finite): one reduction per leaf,
        # not two, and per-leaf kernels are what a deep net's step spends its compile time on.
        layer_sq = jnp.stack(
            [
                sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves)
                for leaves in signals.group_by_layer(grads).values()
            ]
        )
        layer_finite = jnp.isfinite(layer_sq)
        finite = jnp.isfinite(loss) & jnp.all(layer_finite)

        def apply(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            new = optax.apply_updates(state.params, updates), batch_stats, opt_state
            return (*new, updates) if probes else new

        def skip(_):
            old = state.params, state.batch_stats, state.opt_state
            return (*old, jax.tree.map(jnp.zeros_like, state.params)) if probes else old

        # A conditional, not a jnp.where over every leaf of the state: a select predicated on a
        # reduction over all gradients compiles much slower (docs/notes.md).
        # The probes' `updates` are only returned when asked for: zeros for every leaf in the
        # skip branch are one more kernel per leaf to compile.
        params, batch_stats, opt_state, *updates = jax.lax.cond(finite, apply, skip, None)
        first_bad = (state.nonfinite_step < 0) & ~finite
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
            nonfinite_layer=jnp.where(first_bad, jnp.argmin(layer_finite), state.nonfinite_layer),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        )
        metrics = {
            'train/loss': loss,
            'train/accuracy': accuracy,
            'lr': schedule(state.step),
            'train/grad_norm': jnp.sqrt(jnp.sum(layer_sq)),
        }
        if probes:
            probe = signals.weight_signals(state.params, grads, updates[0])
            intermediates = new_vars['intermediates']
            if axis_name is not None:
                # Global-batch signals under pmap: gather every device's examples. The local
                # loss is the mean over 1/n of the batch, so its activation gradients are n x.
                n = jax.lax.psum(1, axis_name)
                intermediates, act_grads = jax.lax.all_gather(
                    (intermediates, act_grads), axis_name, tiled=True
                )
                act_grads = jax.tree.map(lambda g: g / n, act_grads)
            probe.update(signals.activation_signals(intermediates, act_grads, model.preactivation))
            probe.update(blocks.block_signals(intermediates, layout))
            probe.update(blocks.descent_cosines(intermediates, act_grads, layout))
            probe['grad_norm/global'] = metrics['train/grad_norm']
            probe['probe/loss'] = loss
            metrics = {'train': metrics, 'probes': probe}
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
        return objective.eval_sums(logits, batch)

    return eval_step
