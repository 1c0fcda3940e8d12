"""Per-layer signal probes: are gradients vanishing, exploding or healthy?

Pure functions of (params, grads, updates) and of the activations and activation gradients
that the model exposes through Flax's 'intermediates' (`sow`) and 'perturbations'
(`perturb`) collections (see `resjax.models.resnet._observe`). The train step calls them in
its probe variant; inspection calls them on checkpoints. All norms are L2 norms over every
element (batch included) of the quantity, of the gradient of the MEAN loss over the batch.

Metric names (layers sort in forward order, e.g. `001_stage1_block1/conv1`):

- `grad_norm/<layer>`: ||dL/dW|| of a conv or dense layer (kernel and bias together).
- `param_norm/<layer>`: ||W||; `update_ratio/<layer>`: ||W_{t+1} - W_t|| / ||W_t||.
- `act_mean/<layer>`, `act_std/<layer>`: mean and std over all elements (N, H, W, C) of the
  layer's *response*: its output after BN and before the ReLU or residual add (the ResNet
  paper's Fig. 7 quantity; with `norm='none'` the raw conv output).
- `relu_zero/<layer>`: fraction of the units that the ReLU following the response sets to 0
  (for a post-activation block's last layer, the ReLU after the residual add).
- `act_grad_norm/<block>`: ||dL/dh|| with h the output of the stem or of a block (after its
  final ReLU), and `act_grad_norm/logits`. "Vanishing gradients" is about these.
- `act_norm/<block>`: ||h||.
- `gsc/<block>`: the gradient scale coefficient of Philipp et al. 2018 ("The exploding gradient
  problem demystified", Def. 1) estimated as they do from the loss gradient:
  (||dL/dh_k|| ||h_k||) / (||dL/dz|| ||z||) with z the logits. Above 1 and growing towards the
  input means exploding gradients; below 1, vanishing.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

PyTree = Any


def group_by_layer(tree: PyTree) -> dict[str, list[jax.Array]]:
    """Leaves grouped by their parent path ('001_stage1_block1/conv1' -> [kernel, bias]),
    sorted by name, which is forward order for resjax models."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in flat.items():
        groups.setdefault(path.rsplit('/', 1)[0], []).append(leaf)
    return dict(sorted(groups.items()))


def weight_layers(params: PyTree) -> list[str]:
    """Names of the conv and dense layers (those holding a 'kernel'), in forward order."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    return sorted(k.rsplit('/', 1)[0] for k in flat if k.endswith('/kernel'))


def _norm(leaves: list[jax.Array]) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def layer_norms(tree: PyTree, layers: list[str] | None = None) -> dict[str, jax.Array]:
    """L2 norm of each layer's leaves (all layers, or only `layers`)."""
    groups = group_by_layer(tree)
    return {k: _norm(v) for k, v in groups.items() if layers is None or k in layers}


def weight_signals(params: PyTree, grads: PyTree, updates: PyTree) -> dict[str, jax.Array]:
    """`grad_norm/`, `param_norm/` and `update_ratio/` of every conv and dense layer."""
    layers = weight_layers(params)
    g, w, u = (layer_norms(t, layers) for t in (grads, params, updates))
    out = {}
    for name in layers:
        out[f'grad_norm/{name}'] = g[name]
        out[f'param_norm/{name}'] = w[name]
        out[f'update_ratio/{name}'] = u[name] / w[name]
    return out


def _response_layer(path: str) -> str:
    # 'x/response2' -> 'x/conv2'; the stem's 'response' -> 'conv'.
    head, leaf = path.rsplit('/', 1)
    return f'{head}/conv{leaf[len("response") :]}'


def activation_signals(
    intermediates: PyTree, activation_grads: PyTree, preactivation: bool = False
) -> dict[str, jax.Array]:
    """Forward and backward signal from the sown activations and their gradients.

    `intermediates` is the model's 'intermediates' collection from a training-mode forward
    pass; `activation_grads` the gradient of the mean loss w.r.t. its 'perturbations'.
    """
    acts = {
        k: v[0]
        for k, v in flax.traverse_util.flatten_dict(
            flax.core.unfreeze(intermediates), sep='/'
        ).items()
    }
    grads = flax.traverse_util.flatten_dict(flax.core.unfreeze(activation_grads), sep='/')
    out = {}
    last_conv: dict[str, str] = {}
    for path, x in sorted(acts.items()):
        x = x.astype(jnp.float32)
        leaf = path.rsplit('/', 1)[-1]
        if leaf.startswith('response'):
            layer = _response_layer(path)
            out[f'act_mean/{layer}'] = jnp.mean(x)
            out[f'act_std/{layer}'] = jnp.std(x)
            block = path.rsplit('/', 1)[0]
            if last_conv.get(block, '') < layer:
                last_conv[block] = layer
            out[f'relu_zero/{layer}'] = jnp.mean(x <= 0)
    for path, x in sorted(acts.items()):
        if not path.endswith('/output') and path != 'logits':
            continue
        block = path.rsplit('/', 1)[0] if path != 'logits' else 'logits'
        g = grads[path if path == 'logits' else f'{block}/output']
        out[f'act_norm/{block}'] = _norm([x])
        out[f'act_grad_norm/{block}'] = _norm([g])
        if block in last_conv and not preactivation:
            # The block's last response is added to the shortcut before its ReLU: the zeros
            # that matter are those of the block output.
            out[f'relu_zero/{last_conv[block]}'] = jnp.mean(x == 0)
    if 'act_norm/logits' in out:
        scale = out['act_grad_norm/logits'] * out['act_norm/logits']
        for key in [
            k for k in out if k.startswith('act_grad_norm/') and k != 'act_grad_norm/logits'
        ]:
            block = key.split('/', 1)[1]
            out[f'gsc/{block}'] = out[key] * out[f'act_norm/{block}'] / scale
    return out


def profile(metrics: dict[str, float], prefix: str) -> tuple[list[str], list[float]]:
    """The layers and values of one per-layer metric (`prefix/<layer>`), in forward order,
    skipping aggregate entries ('global', 'logits')."""
    items = sorted(
        (k.split('/', 1)[1], v)
        for k, v in metrics.items()
        if k.startswith(prefix + '/') and k.split('/', 1)[1] not in ('global', 'logits')
    )
    return [k for k, _ in items], [v for _, v in items]


def first_last_ratio(metrics: dict[str, float], prefix: str = 'grad_norm') -> float:
    """Ratio of the first to the last conv layer's value (the head excluded): the
    vanishing (< 1) or exploding (> 1) summary of a gradient-norm profile."""
    layers, values = profile(metrics, prefix)
    convs = [v for k, v in zip(layers, values) if not k.startswith('head')]
    return convs[0] / convs[-1]
