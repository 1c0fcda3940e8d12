"""resjax's probes on a ViT-tiny-style transformer (LayerNorm, attention, dropout) on the digits.

    python examples/vit_tiny.py

2x2 patches of the 8x8 digits are 16 tokens with a learned position embedding, followed by
pre-LayerNorm encoder blocks and a mean-pooled head. Dropout makes the loss stochastic: every
curvature and landscape number below is of the loss with ONE fixed dropout mask (the `rngs`
closed over), so the Hessian is that of a deterministic function; the signals use the same key.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import data, landscape
from resjax.probes import curvature, signals


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention and MLP, each with dropout and a residual."""

    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = nn.MultiHeadDotProductAttention(self.heads, deterministic=True, name='attn')(
            nn.LayerNorm(name='ln1')(x)
        )
        x = x + drop(y)
        y = nn.Dense(2 * x.shape[-1], name='mlp1')(nn.LayerNorm(name='ln2')(x))
        return x + drop(nn.Dense(x.shape[-1], name='mlp2')(nn.gelu(y)))


class ViT(nn.Module):
    """Patch embedding, position embedding, `depth` blocks, LayerNorm, mean pool, dense head."""

    dim: int = 32
    depth: int = 2
    heads: int = 2
    patch: int = 2
    dropout: float = 0.1
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.dim, (self.patch, self.patch), self.patch, name='embed')(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        x = x + self.param('pos_embedding', nn.initializers.normal(0.02), x.shape[1:])
        for i in range(self.depth):
            x = Block(self.heads, self.dropout, name=f'block{i}')(x, train)
        return nn.Dense(self.num_classes, name='head')(nn.LayerNorm(name='ln')(x).mean(axis=1))


def mean_loss(model: nn.Module, params, batch: dict, rngs: dict) -> jax.Array:
    """Mean softmax cross-entropy (nats) in training mode with the given dropout `rngs`."""
    logits = model.apply({'params': params}, batch['image'], train=True, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()


def probe(
    model: nn.Module, params, batch: dict, key: jax.Array, grid: int = 11, order: int = 40
) -> dict:
    """Every probe of resjax on `model` at `params`, on one batch: the example's dozen lines.
    `grid` points per axis of the 2-D slice, `order` Lanczos steps (and trace samples)."""
    rngs = {'dropout': jax.random.fold_in(key, 0)}  # one fixed mask: a deterministic loss
    loss_fn = functools.partial(mean_loss, model, rngs=rngs)
    h = curvature.Hessian(loss_fn, params, batch)
    eigenvalues, _ = h.eigenvalues(top_n=1)
    trace, trace_stderr = h.trace(num_samples=order)
    support, density = h.density(order=min(order, h.dim))
    directions = [landscape.random_direction(k, params) for k in jax.random.split(key)]
    xs = np.linspace(-1, 1, grid)
    surface = landscape.slice_2d(loss_fn, params, directions, xs, xs, batch)
    ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    taps = [f'block{i}' for i in range(model.depth)]
    args, variables = (batch['image'],), {'params': params}
    per_layer = signals.measure(
        model, variables, args, lambda z: ce(z).mean(), taps, rngs=rngs, train=True
    )
    return {
        'lambda_max': float(eigenvalues[0]),
        'trace': trace,
        'trace_stderr': trace_stderr,
        'density': (support, density),
        'surface': surface,
        'convexity': landscape.convexity_summary(surface, xs, xs),
        'signals': {k: float(v) for k, v in per_layer.items()},
        'layers': signals.layer_order(model, variables, args, rngs=rngs, train=True),
        'taps': taps,
    }


@functools.partial(jax.jit, static_argnums=(0, 1))
def adam_step(model: nn.Module, tx: optax.GradientTransformation, params, opt_state, batch, key):
    """One optimizer step on the mean loss of `batch`, dropout drawn from `key`."""
    grads = jax.grad(mean_loss, argnums=1)(model, params, batch, {'dropout': key})
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train(model: nn.Module, images, labels, steps: int = 300, seed: int = 0):
    """Adam, lr 1e-3, batch 64 sampled with replacement; returns the params."""
    key = jax.random.PRNGKey(seed)
    params = model.init(key, images[:1])['params']
    tx = optax.adam(1e-3)
    opt_state, rng = tx.init(params), np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.integers(0, len(images), 64)
        batch = {'image': images[idx], 'label': labels[idx]}
        params, opt_state = adam_step(
            model, tx, params, opt_state, batch, jax.random.fold_in(key, step)
        )
    return params


def main() -> None:
    images, labels, _, _ = data.load_digits()
    model = ViT()
    params = train(model, images, labels)
    batch = {'image': jnp.asarray(images[:256]), 'label': jnp.asarray(labels[:256])}
    out = probe(model, params, batch, jax.random.PRNGKey(1))
    print(
        f'lambda_max {out["lambda_max"]:.4g}, trace {out["trace"]:.4g} ± {out["trace_stderr"]:.2g}'
    )
    print(f'2-D slice: loss {out["surface"].min():.3f}..{out["surface"].max():.3f}, '
          f'non-convex fraction {out["convexity"]["nonconvex_fraction"]:.2f}')  # fmt: skip
    for layer in out['layers']:
        print(f'{layer}: grad_norm {out["signals"][f"grad_norm/{layer}"]:.3g}')
    for tap in out['taps']:
        print(f'{tap}: gsc {out["signals"][f"gsc/{tap}"]:.3g}')


if __name__ == '__main__':
    main()
