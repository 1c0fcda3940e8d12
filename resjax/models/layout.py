"""A model's block layout: its blocks in forward order, what each computes, where its residual
branch ends and what its shortcut is.

A model family describes its own structure here (`ModelFamily.layout`, `ResNet.layout`), so
that lesions, the identity construction and the block probes work on any family from this
record instead of parsing parameter names. Parameter paths are '/'-joined keys from the root
of the 'params' tree (the same names as the per-layer metrics), e.g. '001_stage1_block1/conv2'.

Metric rows (metrics.jsonl) hold only names: `parse_name` is the one reader of resjax's naming
convention (`block_name`: `NNN_stageS_blockB`, NNN the forward position, so names sort in
forward order), for code that sees names and no model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import flax
import jax.numpy as jnp

PyTree = Any
SHORTCUT_KINDS = ('identity', 'identity_pad', 'projection')
STEM = '000_stem'
HEAD = 'head'


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block of a model, as its family builds it.

    name: the block's key in the parameter tree (and in the sown 'intermediates').
    stage, index: its stage (1-based) and its index within the stage (1-based).
    stride: its spatial stride (1 for a block that keeps the resolution).
    channels_in, channels_out: features of its input and output (last axis).
    residual: whether it adds a shortcut to its branch.
    shortcut: 'identity', 'identity_pad' (option A: subsample and zero-pad, parameter-free),
      'projection' (a 1x1 conv), or None for a plain block.
    layers: the parameter paths of the branch's weight layers (conv or dense), forward order.
    norms: the parameter paths of the block's own normalisation layers (not the shortcut's),
      forward order; empty without normalisation.
    branch_end: the parameter path of the layer whose output ends the residual branch: a
      lesion zeroes every leaf under it, so that the branch outputs exactly 0. None for a plain
      block.
    dirac_layers: the paths among `layers` whose kernel is Dirac-parametrised, diag(a)·δ + b·W
      (DiracNets; `resjax.models.resnet.DiracConv`: leaves 'kernel' = W, 'dirac_a', 'dirac_b'),
      so that a = 1, b = 0 makes the layer the identity; empty for every other model.
    """

    name: str
    stage: int
    index: int
    stride: int
    channels_in: int
    channels_out: int
    residual: bool
    shortcut: str | None
    layers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    branch_end: str | None = None
    dirac_layers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.residual != (self.shortcut is not None) or (
            self.shortcut is not None and self.shortcut not in SHORTCUT_KINDS
        ):
            raise ValueError(
                f'block {self.name!r}: shortcut {self.shortcut!r} with residual={self.residual}; '
                f'a residual block has one of {SHORTCUT_KINDS}, a plain block None'
            )
        if self.residual and self.branch_end is None:
            raise ValueError(f'residual block {self.name!r} names no branch_end')
        if not set(self.dirac_layers) <= set(self.layers):
            raise ValueError(f'block {self.name!r}: dirac_layers {self.dirac_layers} not in layers')


@dataclasses.dataclass(frozen=True)
class Layout:
    """A model's stem, blocks (forward order) and head, by parameter-tree key."""

    blocks: tuple[BlockSpec, ...]
    stem: str = STEM
    head: str = HEAD

    @property
    def names(self) -> tuple[str, ...]:
        """The stem and the blocks, forward order: the modules whose 'output' the block
        probes compare, each with the one before."""
        return (self.stem, *(b.name for b in self.blocks))

    def block(self, name: str) -> BlockSpec:
        """The block called `name`; KeyError if there is none."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f'{name!r} is not a block of this model')

    def residual_blocks(self) -> tuple[BlockSpec, ...]:
        """The blocks with a residual branch (none for a plain net), forward order."""
        return tuple(b for b in self.blocks if b.residual)

    def stages(self) -> dict[int, list[BlockSpec]]:
        """{stage: its blocks in forward order}, stages in forward order."""
        out: dict[int, list[BlockSpec]] = {}
        for b in self.blocks:
            out.setdefault(b.stage, []).append(b)
        return out


def _flat(tree: PyTree) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _unflat(flat: dict[str, Any]) -> PyTree:
    return flax.traverse_util.unflatten_dict(flat, sep='/')


def zero_under(tree: PyTree, path: str) -> PyTree:
    """A copy of the nested-dict `tree` with every leaf under the '/'-joined `path` zero (same
    shapes and dtypes); the other leaves are the same arrays. ValueError if none is there."""
    flat = _flat(tree)
    hit = [k for k in flat if k.startswith(path + '/')]
    if not hit:
        raise ValueError(f'no parameters under {path!r}')
    for k in hit:
        flat[k] = jnp.zeros_like(flat[k])
    return _unflat(flat)


def lesion(layout: Layout, params: PyTree, block: str) -> PyTree:
    """`params` with `block`'s residual branch removed and its shortcut kept (Veit et al. 2016):
    every leaf under the block's `branch_end` is zero, so the branch outputs exactly 0 in both
    BN modes.

    For resjax's ResNets the branch end is the last BN of a post-activation block with BN (its
    scale and bias zeroed: the block computes relu(shortcut(x)), which is shortcut(x) since x
    >= 0 is the previous block's ReLU output), and the last conv (kernel and bias) of a
    pre-activation block or a block without BN. The shortcut (identity, option A's subsample +
    zero-pad, or a projection) is untouched. ValueError unless `block` is a residual block.
    """
    spec = layout.block(block)
    if not spec.residual:
        raise ValueError(f'{block!r} is a plain block: it has no residual branch to remove')
    return zero_under(params, spec.branch_end)


def added_blocks(deep: Layout, shallow: Layout) -> list[BlockSpec]:
    """The blocks of `deep` that `shallow` has no counterpart for: in each stage, those past
    the number of blocks `shallow` has in that stage (the blocks a constructed deep net adds
    to its shallow source, He et al. 2015 §1)."""
    counts = {stage: len(specs) for stage, specs in shallow.stages().items()}
    return [b for b in deep.blocks if b.index > counts.get(b.stage, 0)]


# ---------------------------------------------------------------------------------------------
# resjax's naming convention, for code that sees metric names and no model.

_NAME = re.compile(r'(\d+)_(?:stage(\d+)_block(\d+)|stem)')


class NameParts(NamedTuple):
    """Where a layer or block sits: forward position (0 = the stem), stage and index within it
    (0 and 0 for the stem)."""

    position: int
    stage: int
    index: int


def block_name(position: int, stage: int, index: int) -> str:
    """The parameter key of the block at forward `position` (1 = the first after the stem),
    `index`-th in `stage`: e.g. '003_stage2_block1'. Sorting these names gives forward order."""
    return f'{position:03d}_stage{stage}_block{index}'


def parse_name(name: str) -> NameParts | None:
    """Position, stage and index of the stem or block that a resjax layer, block or metric
    name belongs to (its first '/'-separated part): '003_stage2_block1/conv1' -> (3, 2, 1),
    '000_stem' -> (0, 0, 0); None for any other name (the head, other models' names)."""
    m = _NAME.fullmatch(name.split('/', 1)[0])
    if m is None:
        return None
    if m[2] is None:
        return NameParts(int(m[1]), 0, 0)
    return NameParts(int(m[1]), int(m[2]), int(m[3]))
