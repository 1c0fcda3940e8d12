"""Plain and residual CNNs of He et al. 2015 ("Deep Residual Learning") as Flax linen modules.

One module, `ResNet`, covers both families of the paper:

- CIFAR family (§4.2): a 3x3 stem, three stages of `n` basic blocks with widths 16/32/64,
  depth 6n+2. Its plain counterpart (`residual=False`) has exactly the same layers.
- ImageNet family (§3.4, Table 1): a 7x7/2 stem and max-pool, four stages of basic (18/34) or
  bottleneck (50/101/152) blocks with widths 64/128/256/512.

Submodules are named so that a flattened parameter path sorts in forward order
(`000_stem/conv`, `001_stage1_block1/conv1`, ..., `head/dense`): per-layer probes can plot a
depth profile by sorting keys, with no lookup table. `ResNet.layout()` says what each block is
(`resjax.models.layout`), and the module takes its block names and strides from it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax.models import conv as conv_lib
from resjax.models import layout as layout_lib
from resjax.probes import signals

# He et al. 2015 ("Delving Deep into Rectifiers") normal init, as the ResNet paper uses.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

SHORTCUTS = ('identity_pad', 'projection', 'all_projection')
NORMS = ('batch', 'none')
# How a plain net's shape-keeping convs get the identity (`Block.dirac`): not at all, by
# parametrisation (DiracNets) or by initialisation only.
DIRAC_MODES = ('none', 'param', 'init')
# The leaves of a Dirac-parametrised conv beside its 'kernel' (W): the per-output-channel a
# and b of diag(a)·δ + b·W. Weight decay leaves them alone (`resjax.optim`).
DIRAC_PARAMS = ('dirac_a', 'dirac_b')

# name -> (block kind, blocks per stage), ImageNet family (paper Table 1).
IMAGENET_STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


class Norm(nn.Module):
    """BatchNorm (PyTorch's defaults: momentum 0.1, eps 1e-5) or the identity.

    In training mode the statistics are those of the batch this module sees: under `jax.jit`
    with a sharded batch that is the global batch; under `pmap` it is the per-device batch
    unless `axis_name` is set (synchronised BN).
    """

    kind: str = 'batch'
    zero_init: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == 'none':
            return x
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=nn.initializers.zeros if self.zero_init else nn.initializers.ones,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name='bn',
        )(x)


def dirac_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """A Flax kernel initializer giving the Dirac kernel (`conv.dirac_kernel`): the
    convolution starts as x -> x. `key` is unused (the init is deterministic)."""
    del key
    return conv_lib.dirac_kernel(shape, dtype)


# What `nn.Conv` passes for a 2-D NHWC input and an HWIO kernel.
_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


class DiracConv(nn.Module):
    """A stride-1 k x k convolution from c to c channels whose kernel is diag(a)·δ + b·W
    (Zagoruyko & Komodakis 2017, "DiracNets"): δ the Dirac kernel (x -> x), W the 'kernel'
    leaf (He-normal init, as a plain conv's), a and b learned per output channel ('dirac_a',
    'dirac_b', both initialised to 1). So a = 0, b = 1 is the plain conv with kernel W, and
    a = 1, b = 0 the identity, whatever W is. W is used as it is, not normalised per filter as
    in the authors' code: normalising would break that a = 0, b = 1 equivalence. Otherwise it
    computes what `nn.Conv` computes: padding k // 2, a bias only if `use_bias`, inputs and
    kernel cast to `dtype`."""

    features: int
    kernel_size: int
    use_bias: bool
    dtype: Any = jnp.float32
    conv_general_dilated: Any = jax.lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.kernel_size // 2
        # 'kernel' first: Flax folds a per-module counter into each parameter's rng, so W is
        # the kernel a plain conv at this path would get from the same seed.
        w = self.param('kernel', he_normal, (k, k, x.shape[-1], self.features), jnp.float32)
        a = self.param(DIRAC_PARAMS[0], nn.initializers.ones, (self.features,), jnp.float32)
        b = self.param(DIRAC_PARAMS[1], nn.initializers.ones, (self.features,), jnp.float32)
        kernel = a * conv_lib.dirac_kernel(w.shape, w.dtype) + b * w  # O is the last axis.
        bias = None
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = self.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            ((p, p), (p, p)),
            lhs_dilation=(1, 1),
            rhs_dilation=(1, 1),
            dimension_numbers=_NHWC_HWIO,
            feature_group_count=1,
            precision=None,
        )
        return y if bias is None else y + bias.reshape(1, 1, 1, -1)


def _conv_layer(
    module: nn.Module, features: int, k: int, strides: int, name: str, dirac: str = 'none'
) -> nn.Module:
    """A k x k convolution, He-normal init, symmetric padding k // 2 (PyTorch's and the
    paper's), a bias only without normalisation; `module.weight_grad` picks how its weight
    gradient is computed (`resjax.models.conv`: same numbers, faster on CPU). `dirac`
    ('param' or 'init', for a stride-1 conv with as many channels in as out) makes it a
    `DiracConv`, or starts its kernel at the Dirac kernel."""
    conv_general_dilated = functools.partial(
        conv_lib.conv_general_dilated, weight_grad=module.weight_grad
    )
    use_bias = module.norm == 'none'
    if dirac == 'param':
        return DiracConv(features, k, use_bias, module.dtype, conv_general_dilated, name=name)
    return nn.Conv(
        features,
        (k, k),
        (strides, strides),
        padding=((k // 2, k // 2),) * 2,
        use_bias=use_bias,
        kernel_init=dirac_init if dirac == 'init' else he_normal,
        dtype=module.dtype,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


class Block(nn.Module):
    """A residual block's skeleton: convolutions `layers()`, each followed by its norm (and a
    ReLU but after the last); with `residual`, plus a shortcut (paper §3.3), then the ReLU.
    With `preactivation` (He et al. 2016, "Identity Mappings") each convolution is preceded
    by norm-ReLU instead, and nothing follows the add. Subclasses say only what the layers are.

    `dirac` (plain blocks only) applies to each convolution that keeps the shape (stride 1, as
    many channels in as out; `dirac_modes`): 'param' makes it a `DiracConv`, 'init' starts its
    kernel at the Dirac kernel (no noise added), 'none' leaves it a He-init conv.
    `shortcut_scale` multiplies the shortcut: y = F(x) + shortcut_scale * shortcut(x).
    """

    filters: int
    strides: int = 1
    residual: bool = True
    shortcut: str = 'identity_pad'
    norm: str = 'batch'
    preactivation: bool = False
    zero_init_last: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    weight_grad: str = 'auto'
    dirac: str = 'none'
    shortcut_scale: float = 1.0

    expansion = 1  # Output channels = filters * expansion.

    def layers(self) -> list[tuple[int, int, int]]:
        """(features, kernel size, stride) of each convolution, in forward order."""
        raise NotImplementedError

    def dirac_modes(self, channels_in: int) -> list[str]:
        """`dirac` for each convolution (forward order) that keeps the shape of its input
        (stride 1, as many channels in as out) for a block input of `channels_in` channels;
        'none' for the others (a strided or channel-changing conv has no identity)."""
        modes, channels = [], channels_in
        for features, _, strides in self.layers():
            modes.append(self.dirac if strides == 1 and channels == features else 'none')
            channels = features
        return modes

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(_conv_layer, self)
        norm = lambda name, zero=False: Norm(self.norm, zero, self.axis_name, self.dtype, name=name)
        layers = self.layers()
        dirac = self.dirac_modes(x.shape[-1])
        last = len(layers)
        if self.preactivation:
            y = nn.relu(norm('norm1')(x, train))
            shortcut_in = y if _needs_projection(self, x.shape[-1]) else x
            for i, (features, k, strides) in enumerate(layers, 1):
                y = conv(features, k, strides, f'conv{i}', dirac[i - 1])(y)
                if i < last:
                    y = nn.relu(
                        signals.observe(self, f'response{i}', norm(f'norm{i + 1}')(y, train))
                    )
            if self.residual:
                y = _add_shortcut(self, y, _shortcut(self, shortcut_in, train, conv, norm))
            return signals.observe(self, 'output', y)
        y = x
        for i, (features, k, strides) in enumerate(layers, 1):
            y = conv(features, k, strides, f'conv{i}', dirac[i - 1])(y)
            zero = i == last and self.zero_init_last
            y = signals.observe(self, f'response{i}', norm(f'norm{i}', zero)(y, train))
            if i < last:
                y = nn.relu(y)
        if self.residual:
            y = _add_shortcut(self, y, _shortcut(self, x, train, conv, norm))
        return signals.observe(self, 'output', nn.relu(y))


def _add_shortcut(block: nn.Module, branch: jax.Array, shortcut: jax.Array) -> jax.Array:
    """F(x) + shortcut_scale * shortcut(x); both terms (the shortcut scaled: what is added)
    are sown ('branch', 'shortcut') for the block probes (`resjax.probes.blocks`: the branch
    ratio ||F(x)|| / ||shortcut||), a no-op otherwise."""
    if block.shortcut_scale != 1.0:  # A Python constant: at 1.0 the graph is as it was.
        shortcut = block.shortcut_scale * shortcut
    block.sow('intermediates', 'branch', branch)
    block.sow('intermediates', 'shortcut', shortcut)
    return branch + shortcut


class BasicBlock(Block):
    """Two 3x3 convolutions, the first strided (paper Fig. 2 / Fig. 3)."""

    def layers(self) -> list[tuple[int, int, int]]:
        return [(self.filters, 3, self.strides), (self.filters, 3, 1)]


class BottleneckBlock(Block):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4); the ImageNet family's deeper block (paper
    Fig. 5)."""

    shortcut: str = 'projection'
    expansion = 4

    def layers(self) -> list[tuple[int, int, int]]:
        out = self.filters * self.expansion
        return [(self.filters, 1, 1), (self.filters, 3, self.strides), (out, 1, 1)]


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


def _out_channels(block: Block) -> int:
    return block.filters * block.expansion


def _needs_projection(block: nn.Module, channels_in: int) -> bool:
    changes_shape = block.strides != 1 or channels_in != _out_channels(block)
    if block.shortcut == 'all_projection':
        return True
    return block.shortcut == 'projection' and changes_shape


def _shortcut(block, x, train, conv, norm) -> jax.Array:
    """The paper's shortcut options (§3.3): A zero-pads, B projects when shapes change, C always."""
    out = _out_channels(block)
    if _needs_projection(block, x.shape[-1]):
        y = conv(out, 1, block.strides, 'shortcut_conv')(x)
        return y if block.preactivation else norm('shortcut_norm')(y, train)
    if block.strides != 1:
        # Option A: subsample by taking every other pixel (a 1x1 stride-2 identity) ...
        x = x[:, :: block.strides, :: block.strides, :]
    if x.shape[-1] != out:
        # ... and zero-pad the new channels: no parameters, so plain and residual nets match.
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out - x.shape[-1])))
    return x


class Stem(nn.Module):
    """The first convolution (3x3 for CIFAR, 7x7/2 + 3x3/2 max-pool for ImageNet)."""

    family: str
    width: int
    norm: str
    preactivation: bool
    axis_name: str | None = None
    dtype: Any = jnp.float32
    weight_grad: str = 'auto'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k, s = (3, 1) if self.family == 'cifar' else (7, 2)
        x = _conv_layer(self, self.width, k, s, 'conv')(x)
        if not self.preactivation:
            x = nn.relu(
                signals.observe(
                    self,
                    'response',
                    Norm(self.norm, False, self.axis_name, self.dtype, name='norm')(x, train),
                )
            )
        if self.family == 'imagenet':
            x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
        return signals.observe(self, 'output', x)


class Head(nn.Module):
    """Global average pooling and the classifier (after a final BN-ReLU for pre-activation)."""

    num_classes: int
    norm: str
    preactivation: bool
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.preactivation:
            x = nn.relu(Norm(self.norm, False, self.axis_name, self.dtype, name='norm')(x, train))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name='dense')(x)


class ResNet(nn.Module):
    """A plain or residual CNN; `residual=False` removes every shortcut and nothing else.

    Input: NHWC images (any channel count, any spatial size >= 8). Output: float32 logits.
    `dtype` is the compute dtype (e.g. bfloat16); parameters are always float32.
    `dirac` and `shortcut_scale`: as `Block`'s, for every block (plain nets: `dirac`; residual
    nets: `shortcut_scale`; the defaults change nothing).
    """

    num_classes: int
    stage_sizes: Sequence[int]
    block: str = 'basic'
    widths: Sequence[int] = (16, 32, 64)
    family: str = 'cifar'
    residual: bool = True
    shortcut: str = 'identity_pad'
    norm: str = 'batch'
    preactivation: bool = False
    zero_init_last: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    weight_grad: str = 'auto'
    scan_blocks: bool = False
    dirac: str = 'none'
    shortcut_scale: float = 1.0

    def _block(self, filters: int, **kwargs: Any) -> Block:
        return BLOCKS[self.block](
            filters,
            residual=self.residual,
            shortcut=self.shortcut,
            norm=self.norm,
            preactivation=self.preactivation,
            zero_init_last=self.zero_init_last,
            axis_name=self.axis_name,
            dtype=self.dtype,
            weight_grad=self.weight_grad,
            dirac=self.dirac,
            shortcut_scale=self.shortcut_scale,
            **kwargs,
        )

    def layout(self) -> layout_lib.Layout:
        """The blocks in forward order: the first block of every stage after the first has
        stride 2; the branch ends at its last BN (post-activation with BN: what F(x) is before
        the add) or its last conv (pre-activation, or no BN); the shortcut is a projection
        where `shortcut` asks for one (`_needs_projection`), else option A's parameter-free
        identity ('identity_pad' where it subsamples or pads); with `dirac='param'` the
        shape-keeping convs (`Block.dirac_modes`) are listed as Dirac-parametrised."""
        specs = []
        channels = self.widths[0]  # The stem's output.
        position = 1
        for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths), 1):
            for index in range(1, num_blocks + 1):
                stride = 2 if stage > 1 and index == 1 else 1
                block = self._block(width, strides=stride, parent=None)
                out = _out_channels(block)
                name = layout_lib.block_name(position, stage, index)
                convs = tuple(f'{name}/conv{i}' for i in range(1, len(block.layers()) + 1))
                modes = block.dirac_modes(channels)
                dirac = tuple(c for c, mode in zip(convs, modes) if mode == 'param')
                norms = ()
                if self.norm != 'none':
                    norms = tuple(f'{name}/norm{i}/bn' for i in range(1, len(convs) + 1))
                shortcut, end = None, None
                if self.residual:
                    if _needs_projection(block, channels):
                        shortcut = 'projection'
                    elif stride != 1 or channels != out:
                        shortcut = 'identity_pad'
                    else:
                        shortcut = 'identity'
                    end = norms[-1] if norms and not self.preactivation else convs[-1]
                specs.append(
                    layout_lib.BlockSpec(
                        name=name,
                        stage=stage,
                        index=index,
                        stride=stride,
                        channels_in=channels,
                        channels_out=out,
                        residual=self.residual,
                        shortcut=shortcut,
                        layers=convs,
                        norms=norms,
                        branch_end=end,
                        dirac_layers=dirac,
                    )
                )
                channels = out
                position += 1
        return layout_lib.Layout(tuple(specs), stem=layout_lib.STEM, head=layout_lib.HEAD)

    def _can_scan(self) -> bool:
        """Scanning needs the blocks' variables to exist and no per-block probe collections."""
        return not (
            self.is_initializing()
            or self.is_mutable_collection('intermediates')
            or 'perturbations' in self.variables
        )

    def _scan_blocks(
        self, block: nn.Module, names: Sequence[str], x: jax.Array, train: bool
    ) -> jax.Array:
        """Applies the identical blocks `names` (in order) as one `lax.scan` over their stacked
        variables: XLA compiles one block instead of len(names). The variables stay per block
        (read here, batch statistics written back), so the result and the parameter tree are
        those of the unrolled loop. The scanned block is rematerialised except for its
        convolution outputs (`conv.CONV_OUTPUT`): the backward pass recomputes BN and ReLU from
        them rather than storing each block's elementwise intermediates into stacked buffers.
        """
        cols = ['params'] + (['batch_stats'] if self.has_variable('batch_stats', names[0]) else [])
        stacked = {
            col: jax.tree.map(lambda *v: jnp.stack(v), *[self.get_variable(col, n) for n in names])
            for col in cols
        }
        update = train and 'batch_stats' in cols and self.is_mutable_collection('batch_stats')

        def body(x, variables):
            if update:
                y, new = block.apply(variables, x, train, mutable=['batch_stats'])
                return y, new['batch_stats']
            return block.apply(variables, x, train), None

        policy = jax.checkpoint_policies.save_only_these_names(conv_lib.CONV_OUTPUT)
        body = jax.checkpoint(body, prevent_cse=False, policy=policy)
        x, stats = jax.lax.scan(body, x, stacked)
        if update:
            for i, name in enumerate(names):
                self.put_variable('batch_stats', name, jax.tree.map(lambda v, i=i: v[i], stats))
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        layout = self.layout()
        x = x.astype(self.dtype)
        x = Stem(
            self.family,
            self.widths[0],
            self.norm,
            self.preactivation,
            self.axis_name,
            self.dtype,
            self.weight_grad,
            name=layout.stem,
        )(x, train)
        for (first, *rest), width in zip(layout.stages().values(), self.widths):
            x = self._block(width, strides=first.stride, name=first.name)(x, train)
            names = [b.name for b in rest]
            if self.scan_blocks and len(names) > 1 and self._can_scan():
                x = self._scan_blocks(self._block(width, parent=None), names, x, train)
            else:
                for name in names:
                    x = self._block(width, name=name)(x, train)
        x = Head(
            self.num_classes,
            self.norm,
            self.preactivation,
            self.axis_name,
            self.dtype,
            name=layout.head,
        )(x, train)
        return signals.observe(self, 'logits', x.astype(jnp.promote_types(self.dtype, jnp.float32)))
