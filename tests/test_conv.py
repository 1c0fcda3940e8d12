"""The matmul weight-gradient convolution against XLA's own, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resjax import config_lib, models
from resjax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'kernel,strides,padding',
    [(3, 1, (1, 1)), (3, 2, (1, 1)), (5, 2, (2, 2)), (3, 1, (0, 2))],
)
def test_gradients_and_hvp_match_xla(x64, kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 9, 8, 4))
    w = rng.normal(size=(kernel, kernel, 4, 5))
    pads = (padding, padding)

    def loss(conv_fn):
        def f(x, w):
            y = conv_fn(x, w, (strides, strides), pads, dimension_numbers=NHWC)
            return jnp.sum(jnp.tanh(y) ** 2)

        return f

    ours = loss(lambda *a, **k: conv.conv_general_dilated(*a, **k, weight_grad='matmul'))
    ref = loss(lax.conv_general_dilated)
    tangents = (rng.normal(size=x.shape), rng.normal(size=w.shape))

    @jax.jit
    def value_grad_hvp(x, w, tangents):
        # Forward-over-reverse (the curvature probes' HVP) goes through the custom JVP rule.
        return (
            ours(x, w),
            ref(x, w),
            jax.grad(ours, (0, 1))(x, w),
            jax.grad(ref, (0, 1))(x, w),
            jax.jvp(jax.grad(ours, (0, 1)), (x, w), tangents)[1],
            jax.jvp(jax.grad(ref, (0, 1)), (x, w), tangents)[1],
        )

    value, value_ref, grads, grads_ref, hvp, hvp_ref = value_grad_hvp(x, w, tangents)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    for got, want in zip(grads + hvp, grads_ref + hvp_ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_resnet_gradients_same_with_either_weight_gradient():
    config = config_lib.default_config().model
    config.update(depth=8, width=0.25)  # 'matmul' forces the matmul form on 8x8 maps too
    images = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    nets = {}
    for weight_grad in ('xla', 'matmul'):
        config.weight_grad = weight_grad
        nets[weight_grad] = models.create_model(config, 10)
    variables = jax.jit(nets['xla'].init, static_argnames='train')(
        jax.random.PRNGKey(0), images, train=False
    )

    @jax.jit
    def grads(params):
        def loss(model, params):
            logits, _ = model.apply(
                {**variables, 'params': params}, images, train=True, mutable=['batch_stats']
            )
            return jnp.mean(logits**2)

        return {g: jax.grad(loss, 1)(net, params) for g, net in nets.items()}

    out = grads(variables['params'])
    for got, want in zip(jax.tree.leaves(out['matmul']), jax.tree.leaves(out['xla'])):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_auto_uses_matmuls_only_on_cpu_for_large_maps():
    cpu = jax.default_backend() == 'cpu'
    assert conv.use_matmul_weight_grad('auto', (32, 32)) == cpu
    assert not conv.use_matmul_weight_grad('auto', (16, 16))
    assert conv.use_matmul_weight_grad('matmul', (8, 8))
    assert not conv.use_matmul_weight_grad('xla', (32, 32))
