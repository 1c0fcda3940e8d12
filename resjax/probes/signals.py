"""Per-layer signal probes for any Flax linen model: are gradients vanishing, exploding or healthy?

Pure functions of (params, grads, updates) and of activations and activation gradients. The
contract for activations is one function, `observe(module, name, x)`: it sows `x` to the
'intermediates' collection and passes it through `perturb`, so the gradient of the loss with
respect to the zero 'perturbations' variable of the same name is dL/dx (Flax's documented way
to get activation gradients; both are no-ops unless the collections are asked for, so an
ordinary forward pass pays nothing). resjax's ResNets call `observe` themselves
(`resjax.models.resnet`); for any other linen model, `tap(paths)` calls it on the `__call__`
output of the chosen submodules without editing the model, and `measure` runs one forward and
backward pass and returns the numbers below. All norms are L2 norms over every element (batch
included), of the gradient of the MEAN loss over the batch.

    metrics = signals.measure(model, variables, (x,), lambda out: mean_loss(out, y),
                              taps=['Block_0', 'Block_1'], rngs={'dropout': key}, train=True)

Metric names for any model (`<layer>` a parameter-owning module path, `<tap>` a tapped module
path, 'output' the model's output):

- `grad_norm/<layer>`, `param_norm/<layer>`: ||dL/dW||, ||W|| over all the layer's own leaves;
  `update_ratio/<layer>`: ||W_{t+1} - W_t|| / ||W_t|| when an update is given.
- `act_mean/<tap>`, `act_std/<tap>`, `act_norm/<tap>`: mean, std and norm over all elements.
- `act_grad_norm/<tap>`: ||dL/dh||; `gsc/<tap>`: the gradient scale coefficient of Philipp et
  al. 2018 ("The exploding gradient problem demystified", Def. 1), estimated as they do from the
  loss gradient: (||dL/dh|| ||h||) / (||dL/dz|| ||z||) with z the model output. Above 1 and
  growing towards the input means exploding gradients; below 1, vanishing.

Layers come in forward order (`layer_order`: the order the module's submodules are called), or in
the order the caller gives. resjax's ResNets keep their own names (`activation_signals`), which
sort in forward order (e.g. `001_stage1_block1/conv1`):

- `grad_norm/`, `param_norm/`, `update_ratio/<layer>` of the conv and dense layers only.
- `act_mean/<layer>`, `act_std/<layer>`: over all elements (N, H, W, C) of the layer's
  *response*: its output after BN and before the ReLU or residual add (the ResNet paper's Fig. 7
  quantity; with `norm='none'` the raw conv output).
- `relu_zero/<layer>`: fraction of the units that the ReLU following the response sets to 0
  (for a post-activation block's last layer, the ReLU after the residual add).
- `act_grad_norm/<block>`, `act_norm/<block>`, `gsc/<block>` with h the output of the stem or
  of a block (after its final ReLU), and `act_grad_norm/logits`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
TAP = 'tap'  # The `observe` name `tap` gives a chosen module's output.


# ---------------------------------------------------------------------------------------------
# Exposing activations, and one forward-backward pass that differentiates them.


def observe(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """Exposes `x` to the signal probes: `sow`s it to 'intermediates' and returns it through
    `perturb(name, x)` (so dL/d'perturbations'[name] is dL/dx). A no-op unless the caller makes
    'intermediates' mutable or passes 'perturbations'."""
    module.sow('intermediates', name, x)
    return module.perturb(name, x)


@contextlib.contextmanager
def tap(paths: Sequence[str]) -> Iterator[None]:
    """Within this context, the `__call__` output of each submodule whose path ('/'-joined
    module names, e.g. 'Encoder_0/Block_1') is in `paths`, and of the top module (path ''),
    goes through `observe(module, TAP, output)`. Works on any linen model without editing it,
    except for modules inside lifted transforms (`nn.scan`, `nn.remat`), whose intermediates
    would leave their trace. A module called twice is observed twice (sown values: the first
    call's; its perturbation gradient: the sum over calls)."""
    chosen = set(paths) | {''}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = '/'.join(context.module.path)
        if context.method_name == '__call__' and path in chosen and isinstance(out, jax.Array):
            out = observe(context.module, TAP, out)
        return out

    with nn.intercept_methods(interceptor):
        yield


def _apply(model, variables, args, rngs, mutable, kwargs):
    # Every caller here already makes the state collections mutable, so a caller's own
    # `mutable=['batch_stats']` (what a BN model needs in its training-mode apply) is redundant.
    kwargs = {k: v for k, v in kwargs.items() if k != 'mutable'}
    return model.apply(variables, *args, rngs=rngs, mutable=mutable, **kwargs)


def perturbation_zeros(
    model: nn.Module, variables: PyTree, args: tuple, rngs: dict | None = None, **kwargs
) -> PyTree:
    """Zeros shaped like the activations the model `observe`s when applied to `args` with
    `kwargs` (traced abstractly once: no runtime cost); `variables`' own 'perturbations' (an
    `init` on other shapes makes them) are ignored."""
    variables = {k: v for k, v in variables.items() if k != 'perturbations'}
    _, new = jax.eval_shape(lambda v: _apply(model, v, args, rngs, True, kwargs), variables)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), new.get('perturbations', {}))


def value_and_grads(
    model: nn.Module,
    variables: PyTree,
    args: tuple,
    loss_fn: Callable[[Any], jax.Array],
    rngs: dict | None = None,
    observe: bool = True,
    **kwargs,
) -> tuple[jax.Array, Any, PyTree, PyTree, PyTree]:
    """One forward and backward pass of `loss_fn(model.apply(variables, *args, **kwargs))`.

    `loss_fn` maps the model output to the MEAN loss over the batch (close over the labels);
    `rngs` (e.g. {'dropout': key}) and `kwargs` (e.g. train=True) go to `apply`; every
    collection of `variables` but 'params' is mutable (BatchNorm in training mode updates its
    statistics in the returned copy; the inputs are never changed). Returns (loss, output,
    new_variables, dL/dparams, dL/dactivations): with `observe`, `new_variables` holds the
    sown 'intermediates' and dL/dactivations the gradients of the observed activations
    (w.r.t. zero 'perturbations'); without, they are absent and {}.
    """
    params = variables['params']
    rest = {k: v for k, v in variables.items() if k not in ('params', 'perturbations')}
    mutable = [*rest, 'intermediates'] if observe else list(rest)

    def f(params, perturbations):
        v = {**rest, 'params': params, **({'perturbations': perturbations} if observe else {})}
        out, new = _apply(model, v, args, rngs, mutable, kwargs)
        return loss_fn(out), (out, new)

    zeros = {}
    if observe:
        zeros = perturbation_zeros(model, variables, args, rngs, **kwargs)
    (loss, (out, new)), (grads, act_grads) = jax.value_and_grad(f, (0, 1), has_aux=True)(
        params, zeros
    )
    return loss, out, new, grads, act_grads


# ---------------------------------------------------------------------------------------------
# Layers and their parameter-side signals.


def group_by_layer(tree: PyTree) -> dict[str, list[jax.Array]]:
    """Leaves grouped by their parent path ('001_stage1_block1/conv1' -> [kernel, bias]),
    sorted by name (forward order for resjax models; `layer_order` for any model)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in flat.items():
        groups.setdefault(path.rsplit('/', 1)[0], []).append(leaf)
    return dict(sorted(groups.items()))


def layer_order(
    model: nn.Module, variables: PyTree, args: tuple, rngs: dict | None = None, **kwargs
) -> list[str]:
    """The layers of `variables['params']` (as `group_by_layer` names them) in forward order:
    the order in which `model.apply(variables, *args, **kwargs)` first calls the module that
    owns each (traced abstractly: no compute). Leaves a module owns directly (e.g. a position
    embedding of the top module) come where that module is called; ties keep name order."""
    calls: list[str] = []

    def record(next_fun, a, kw, context):
        if context.method_name == '__call__':
            calls.append('/'.join(context.module.path))
        return next_fun(*a, **kw)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: _apply(model, v, args, rngs, True, kwargs), variables)
    first = {p: i for i, p in reversed(list(enumerate(calls)))}

    def position(layer: str) -> int:
        owners = [p for p in first if p == '' or layer == p or layer.startswith(p + '/')]
        return first[max(owners, key=len)] if owners else len(calls)

    return sorted(group_by_layer(variables['params']), key=position)


def weight_layers(params: PyTree) -> list[str]:
    """Names of the conv and dense layers (those holding a 'kernel'), sorted by name."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
    return sorted(k.rsplit('/', 1)[0] for k in flat if k.endswith('/kernel'))


def _norm(leaves: list[jax.Array]) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def layer_norms(tree: PyTree, layers: list[str] | None = None) -> dict[str, jax.Array]:
    """L2 norm of each layer's leaves (all layers, or only `layers`)."""
    groups = group_by_layer(tree)
    return {k: _norm(v) for k, v in groups.items() if layers is None or k in layers}


def weight_signals(
    params: PyTree, grads: PyTree, updates: PyTree = None, layers: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """`grad_norm/`, `param_norm/` and (with `updates`) `update_ratio/` of each layer in
    `layers` (default: the conv and dense layers, `weight_layers`), in that order."""
    layers = weight_layers(params) if layers is None else list(layers)
    trees = (grads, params) if updates is None else (grads, params, updates)
    g, w, *u = (layer_norms(t, layers) for t in trees)
    out = {}
    for name in layers:
        out[f'grad_norm/{name}'] = g[name]
        out[f'param_norm/{name}'] = w[name]
        if u:
            out[f'update_ratio/{name}'] = u[0][name] / w[name]
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


def tap_signals(
    intermediates: PyTree, activation_grads: PyTree, taps: Sequence[str] = ()
) -> dict[str, jax.Array]:
    """`act_mean/`, `act_std/`, `act_norm/`, `act_grad_norm/` and `gsc/` of each activation
    `tap` observed (module paths in `taps` order, then the model output as 'output'), from the
    'intermediates' and activation gradients of `value_and_grads` run inside `tap(taps)`."""
    acts = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates), sep='/')
    grads = flax.traverse_util.flatten_dict(flax.core.unfreeze(activation_grads), sep='/')
    out = {}
    for name in [*taps, 'output']:
        key = TAP if name == 'output' else f'{name}/{TAP}'
        if key not in acts:
            raise ValueError(
                f'tap {name!r}: no module at that path returned an array; the paths are '
                "'/'-joined module names (signals.layer_order lists the parameter-owning ones)"
            )
        x, g = acts[key][0].astype(jnp.float32), grads[key]
        out[f'act_mean/{name}'] = jnp.mean(x)
        out[f'act_std/{name}'] = jnp.std(x)
        out[f'act_norm/{name}'] = _norm([x])
        out[f'act_grad_norm/{name}'] = _norm([g])
    scale = out['act_grad_norm/output'] * out['act_norm/output']
    for name in [*taps, 'output']:
        out[f'gsc/{name}'] = out[f'act_grad_norm/{name}'] * out[f'act_norm/{name}'] / scale
    return out


def measure(
    model: nn.Module,
    variables: PyTree,
    args: tuple,
    loss_fn: Callable[[Any], jax.Array],
    taps: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    rngs: dict | None = None,
    **kwargs,
) -> dict[str, jax.Array]:
    """Per-layer signals of any linen model on one batch: one forward and backward pass of
    `loss_fn(model.apply(variables, *args, rngs=rngs, **kwargs))` (`value_and_grads`, so
    `loss_fn` returns the MEAN loss over the batch).

    Returns `grad_norm/` and `param_norm/` of every layer (default: every parameter-owning
    module in forward order, `layer_order`; or the `layers` given), the activation signals of
    `tap_signals` for the module paths in `taps` and the model output, `grad_norm/global` and
    `probe/loss`. The pass is compiled for each call (`jax.jit`, with `loss_fn` and the
    arguments baked in); inside a jitted function of the caller it is simply traced.

    BatchNorm and other state: pass every collection in `variables` (e.g. {'params': ...,
    'batch_stats': ...}) and the model's own mode argument in `kwargs`: `train=True` for
    training-mode BN (the batch's statistics; the updated running statistics are discarded,
    `variables` is never changed), or its eval mode for the running statistics. A `mutable`
    argument is accepted and ignored: every collection but 'params' is already mutable.
    """
    if layers is None:
        layers = layer_order(model, variables, args, rngs, **kwargs)

    def compute(variables, args, rngs):
        with tap(taps):
            loss, _, new, grads, act_grads = value_and_grads(
                model, variables, args, loss_fn, rngs, **kwargs
            )
        out = weight_signals(variables['params'], grads, layers=layers)
        out.update(tap_signals(new['intermediates'], act_grads, taps))
        out['grad_norm/global'] = _norm(jax.tree.leaves(grads))
        out['probe/loss'] = loss
        return out

    return jax.jit(compute)(variables, args, rngs)


def profile(
    metrics: dict[str, float], prefix: str, order: Sequence[str] | None = None
) -> tuple[list[str], list[float]]:
    """The layers and values of one per-layer metric (`prefix/<layer>`), in `order` if given
    (layers without the metric skipped), else sorted by name (forward order for resjax's
    models), skipping aggregate entries ('global', 'logits', 'output')."""
    values = {
        k.split('/', 1)[1]: v
        for k, v in metrics.items()
        if k.startswith(prefix + '/') and k.split('/', 1)[1] not in ('global', 'logits', 'output')
    }
    layers = sorted(values) if order is None else [k for k in order if k in values]
    return layers, [values[k] for k in layers]


def first_last_ratio(metrics: dict[str, float], prefix: str = 'grad_norm') -> float:
    """Ratio of the first to the last conv layer's value (the head excluded): the
    vanishing (< 1) or exploding (> 1) summary of a gradient-norm profile."""
    layers, values = profile(metrics, prefix)
    convs = [v for k, v in zip(layers, values) if not k.startswith('head')]
    return convs[0] / convs[-1]
