"""The custom weight-gradient forms of resjax.models.conv against XLA's own, in float64."""

import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resjax import config_lib, models, xla
from resjax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'kernel,strides,pads',
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1))),
        ((3, 3), (2, 2), ((1, 1), (1, 1))),
        ((5, 5), (2, 2), ((2, 2), (2, 2))),
        ((3, 3), (1, 1), ((0, 2), (0, 2))),
        ((3, 2), (3, 2), ((1, 0), (2, 1))),
        ((2, 4), (1, 3), ((0, 0), (1, 2))),
        ((1, 1), (2, 2), ((0, 0), (0, 0))),
        ((3, 3), (1, 1), ((-1, 1), (1, -1))),  # Cropping padding.
    ],
)
def test_gradients_and_hvp_match_xla(x64, kernel, strides, pads):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 9, 8, 4))
    w = rng.normal(size=(*kernel, 4, 5))

    def loss(conv_fn):
        def f(x, w):
            y = conv_fn(x, w, strides, pads, dimension_numbers=NHWC)
            return jnp.sum(jnp.tanh(y) ** 2)

        return f

    ours = loss(lambda *a, **k: conv.conv_general_dilated(*a, **k, weight_grad='stored'))
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
    config.update(depth=8, width=0.25)
    images = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    nets = {}
    for weight_grad in ('xla', 'stored'):
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
    for got, want in zip(jax.tree.leaves(out['stored']), jax.tree.leaves(out['xla'])):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_stored_input_stays_a_fusion_boundary_and_keeps_nans():
    # XLA drops an optimization_barrier or a conditional with identical branches; if it ever
    # drops this one, the weight gradient's transpose recomputes x's producers again (slow).
    def grad(x, w):
        def loss(w):
            y = conv.conv_general_dilated(
                jnp.tanh(x),
                w,
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=NHWC,
                weight_grad='stored',
            )
            return jnp.sum(y**2)

        return jax.grad(loss)(w)

    x, w = jnp.ones((2, 6, 6, 2)), jnp.ones((3, 3, 2, 3))
    assert ' conditional(' in xla.jit(grad).lower(x, w).compile().as_text()
    assert np.isfinite(grad(x, w)).all()
    assert np.isnan(grad(x.at[0, 0, 0, 0].set(np.nan), w)).all()


@pytest.mark.parametrize(
    'weight_grad,expected',
    [('auto', jax.default_backend() == 'cpu'), ('stored', True), ('xla', False)],
)
def test_which_convolutions_take_the_stored_form(weight_grad, expected):
    def f(x, w):
        return conv.conv_general_dilated(
            x, w, (1, 1), 'SAME', dimension_numbers=NHWC, weight_grad=weight_grad
        )

    jaxpr = jax.make_jaxpr(f)(jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 3)))
    assert ('name=_stored_conv\n' in str(jaxpr)) == expected


@pytest.mark.parametrize('weight_grad', ['stored', 'xla'])
def test_gradient_convolutions_are_in_xla_cpu_native_order(weight_grad):
    # XLA:CPU reorders the dimensions of top-level convolutions only; inside a scan body a
    # convolution not already in NHWC/HWIO/NHWC order runs as a naive loop (docs/notes.md, XLA:CPU).
    def loss(x, w):
        y = conv.conv_general_dilated(
            x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC, weight_grad=weight_grad
        )
        return jnp.sum(y**2)

    def conv_specs(jaxpr):  # Recursively: the forward sits in a custom_jvp call.
        for e in jaxpr.eqns:
            if e.primitive.name == 'conv_general_dilated':
                yield e.params['dimension_numbers']
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                yield from conv_specs(sub)

    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    specs = list(conv_specs(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr))
    assert len(specs) == 3  # Forward, input gradient, weight gradient.
    native = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    assert all(s == native for s in specs) == (weight_grad == 'stored')


def _library_fused_convolutions(hlo: str) -> int:
    """Convolutions inside custom (YNNPACK/XNNPACK library) fusions of compiled HLO text."""
    comps = re.findall(r'^%(\S+) .*?\{\n(.*?)\n\}', hlo, re.M | re.S)
    with_conv = {name for name, body in comps if ' convolution(' in body}
    return sum(n in with_conv for n in re.findall(r'kind=kCustom, calls=%([\w.\-]+)', hlo))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='CPU compile options')
def test_cpu_step_options_keep_convolutions_in_xla():
    def grad(x, w):
        conv = lambda w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
        return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)

    args = (jnp.ones((8, 8, 8, 32)), jnp.ones((3, 3, 32, 32)))
    assert _library_fused_convolutions(xla.jit(grad).lower(*args).compile().as_text()) == 0
    default = jax.jit(grad).lower(*args).compile().as_text()
    if _library_fused_convolutions(default) == 0:
        pytest.skip("this jaxlib's defaults already keep convolutions in XLA")
    # An explicit None is the default; {} is jaxlib's defaults.
    none = xla.jit(grad, compiler_options=None).lower(*args).compile().as_text()
    assert _library_fused_convolutions(none) == 0
    jaxlib = xla.jit(grad, compiler_options={}).lower(*args).compile().as_text()
    assert _library_fused_convolutions(jaxlib) > 0
