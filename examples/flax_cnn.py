"""resjax's probes on a model resjax did not define: a small Flax CNN on the 8x8 digits.

    python examples/flax_cnn.py

Trains the CNN for a few hundred SGD steps (a second on a laptop), then measures, on one batch of
256 training examples: lambda_max, the Hessian trace and eigenvalue density, a 2-D loss slice
along filter-normalised random directions, and per-layer gradient and activation signals.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import data, landscape
from resjax.probes import curvature, signals


class CNN(nn.Module):
    """Two 3x3 convolutions with ReLU, global average pooling, a dense head."""

    width: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), name='conv1')(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2, name='conv2')(x))
        return nn.Dense(self.num_classes, name='head')(x.mean(axis=(1, 2)))


def mean_loss(model: nn.Module, params, batch: dict) -> jax.Array:
    """Mean softmax cross-entropy (nats) over the batch."""
    logits = model.apply({'params': params}, batch['image'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()


def probe(
    model: nn.Module, params, batch: dict, key: jax.Array, grid: int = 11, order: int = 40
) -> dict:
    """Every probe of resjax on `model` at `params`, on one batch: the example's dozen lines.
    `grid` points per axis of the 2-D slice, `order` Lanczos steps (and trace samples)."""
    loss_fn = functools.partial(mean_loss, model)
    h = curvature.Hessian(loss_fn, params, batch)
    eigenvalues, _ = h.eigenvalues(top_n=1)
    trace, trace_stderr = h.trace(num_samples=order)
    support, density = h.density(order=min(order, h.dim))
    directions = [landscape.random_direction(k, params) for k in jax.random.split(key)]
    xs = np.linspace(-1, 1, grid)
    surface = landscape.slice_2d(loss_fn, params, directions, xs, xs, batch)
    ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    per_layer = signals.measure(
        model, {'params': params}, (batch['image'],), lambda z: ce(z).mean(), taps=['conv1']
    )
    return {
        'lambda_max': float(eigenvalues[0]),
        'trace': trace,
        'trace_stderr': trace_stderr,
        'density': (support, density),
        'surface': surface,
        'convexity': landscape.convexity_summary(surface, xs, xs),
        'signals': {k: float(v) for k, v in per_layer.items()},
        'layers': signals.layer_order(model, {'params': params}, (batch['image'],)),
    }


@functools.partial(jax.jit, static_argnums=(0, 1))
def sgd_step(model: nn.Module, tx: optax.GradientTransformation, params, opt_state, batch: dict):
    """One optimizer step on the mean loss of `batch`."""
    grads = jax.grad(functools.partial(mean_loss, model))(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train(model: nn.Module, images, labels, steps: int = 300, seed: int = 0):
    """SGD with momentum 0.9, lr 0.1, batch 64 sampled with replacement; returns the params."""
    params = model.init(jax.random.PRNGKey(seed), images[:1])['params']
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state, rng = tx.init(params), np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(images), 64)
        batch = {'image': images[idx], 'label': labels[idx]}
        params, opt_state = sgd_step(model, tx, params, opt_state, batch)
    return params


def main() -> None:
    images, labels, _, _ = data.load_digits()
    model = CNN()
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
    print(f'gsc/conv1 {out["signals"]["gsc/conv1"]:.3g}')


if __name__ == '__main__':
    main()
