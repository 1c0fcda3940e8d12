"""Model construction from the `config.model` block, through a registry of model families.

A family is registered by name (`model.family`), as big_vision and init2winit plug models in:
it validates its keys, builds the Flax module, names the keys that define its parameters (a
workdir's checkpoints are refused by a run that changes one), labels runs for figures and
describes its blocks (`resjax.models.layout`: what lesions, the identity construction and the
block probes read).
Adding a family is one `register(ModelFamily(...))` call; nothing else names the families.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from resjax.models import layout
from resjax.models.conv import WEIGHT_GRADS, dirac_kernel
from resjax.models.layout import BlockSpec, Layout
from resjax.models.resnet import (
    DIRAC_MODES,
    DIRAC_PARAMS,
    IMAGENET_STAGES,
    NORMS,
    SHORTCUTS,
    ResNet,
)

__all__ = [
    'DIRAC_MODES',
    'DIRAC_PARAMS',
    'FAMILIES',
    'WEIGHT_GRADS',
    'BlockSpec',
    'Layout',
    'ModelFamily',
    'ResNet',
    'create_model',
    'dirac_kernel',
    'layout',
    'model_layout',
    'register',
    'resume_critical_keys',
    'run_label',
    'validate_model_config',
]

DTYPES = {
    'float32': jnp.float32,
    'bfloat16': jnp.bfloat16,
    'float16': jnp.float16,
    'float64': jnp.float64,  # numerical tests only (needs jax_enable_x64)
}


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What resjax needs to know about a family of models.

    validate: `config.model -> None`, raising ValueError (one line naming the key and the fix).
    build: `(config.model, num_classes, axis_name, **kwargs) -> nn.Module` (already validated);
      `axis_name` makes BatchNorm average its statistics over that pmap axis.
    architecture_keys: the `model.*` keys that decide the parameters (not how they compute).
    label: `model dict (config.json's 'model') -> short run label`, e.g. 'ResNet-56'.
    layout: `config.model -> Layout` (already validated): the blocks in forward order, from
      the family's own description of its modules; None for a family without blocks (it
      trains and is probed per layer, but cannot be lesioned, constructed or block-probed).
    """

    name: str
    validate: Callable[[ml_collections.ConfigDict], None]
    build: Callable[..., nn.Module]
    architecture_keys: tuple[str, ...]
    label: Callable[[dict[str, Any]], str]
    layout: Callable[[ml_collections.ConfigDict], Layout] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Adds `family` under `family.name` (`model.family`); returns it."""
    FAMILIES[family.name] = family
    return family


def validate_model_config(model: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line, naming the key and the fix) for an impossible model."""
    if model.family not in FAMILIES:
        raise ValueError(f'model.family={model.family!r} is unknown; use one of {tuple(FAMILIES)}')
    if model.dtype not in DTYPES:
        raise ValueError(f'model.dtype={model.dtype!r} is unknown; use one of {tuple(DTYPES)}')
    FAMILIES[model.family].validate(model)


def create_model(
    model: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None, **kwargs
) -> nn.Module:
    """Builds the module described by `config.model` (validated first) with its family."""
    validate_model_config(model)
    return FAMILIES[model.family].build(model, num_classes, axis_name, **kwargs)


def model_layout(model: ml_collections.ConfigDict) -> Layout:
    """The block layout of the model `config.model` describes (validated first); ValueError
    (one line) for a family that describes none."""
    validate_model_config(model)
    family = FAMILIES[model.family]
    if family.layout is None:
        raise ValueError(f'model.family={model.family!r} describes no block layout')
    return family.layout(model)


def resume_critical_keys() -> tuple[str, ...]:
    """`model.family` and every registered family's architecture keys, in registration order."""
    keys = ['model.family']
    for family in FAMILIES.values():
        keys += [f'model.{k}' for k in family.architecture_keys if f'model.{k}' not in keys]
    return tuple(keys)


def run_label(model: dict[str, Any]) -> str:
    """A short label for a run from config.json's `model` block, e.g. 'plain-56 (no BN)'."""
    return FAMILIES[model['family']].label(model)


# ---------------------------------------------------------------------------------------------
# The ResNet families of He et al. 2015: CIFAR (6n+2 basic blocks) and ImageNet (Table 1).


def _validate_resnet(model: ml_collections.ConfigDict) -> None:
    if model.family == 'cifar' and (model.depth < 8 or (model.depth - 2) % 6):
        raise ValueError(
            f'model.depth={model.depth} is not 6n+2 with n >= 1 for the CIFAR family; '
            'use 8, 20, 32, 44, 56, 110, 1202, ...'
        )
    if model.family == 'imagenet' and model.depth not in IMAGENET_STAGES:
        raise ValueError(
            f'model.depth={model.depth} is not an ImageNet-family depth; '
            f'use one of {sorted(IMAGENET_STAGES)}'
        )
    if model.shortcut not in SHORTCUTS:
        raise ValueError(f'model.shortcut={model.shortcut!r} is unknown; use one of {SHORTCUTS}')
    if model.norm not in NORMS:
        raise ValueError(f'model.norm={model.norm!r} is unknown; use one of {NORMS}')
    if model.weight_grad not in WEIGHT_GRADS:
        raise ValueError(
            f'model.weight_grad={model.weight_grad!r} is unknown; use one of {WEIGHT_GRADS}'
        )
    if not isinstance(model.scan_blocks, bool):
        raise ValueError(f'model.scan_blocks={model.scan_blocks!r} must be True or False')
    if model.scan_blocks and model.weight_grad == 'xla' and jax.default_backend() == 'cpu':
        raise ValueError(
            "model.scan_blocks=True with model.weight_grad='xla' runs the gradient convolutions "
            "as naive loops on XLA:CPU (docs/benchmarks.md); use weight_grad='auto'"
        )
    if model.width <= 0:
        raise ValueError(f'model.width={model.width} must be a positive width multiplier')
    if model.dirac not in DIRAC_MODES:
        raise ValueError(f'model.dirac={model.dirac!r} is unknown; use one of {DIRAC_MODES}')
    if model.dirac != 'none' and model.residual:
        raise ValueError(
            f'model.dirac={model.dirac!r} is for plain nets (model.residual=False): a residual '
            "net has its identity in the shortcut; use model.dirac='none'"
        )
    scale = model.shortcut_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f'model.shortcut_scale={scale!r} must be a positive finite number')
    if scale != 1.0 and not model.residual:
        raise ValueError(
            f'model.shortcut_scale={scale} scales the shortcut of residual blocks; a plain net '
            '(model.residual=False) has none: leave it 1.0'
        )


def _build_resnet(
    model: ml_collections.ConfigDict, num_classes: int, axis_name: str | None, **kwargs: Any
) -> ResNet:
    """`model.width` multiplies the stage widths (16/32/64 for CIFAR, 64/.../512 for ImageNet)."""
    if model.family == 'cifar':
        n = (model.depth - 2) // 6
        block, stages, widths = 'basic', (n, n, n), (16, 32, 64)
    else:
        block, stages = IMAGENET_STAGES[model.depth]
        widths = (64, 128, 256, 512)
    widths = tuple(max(1, round(w * model.width)) for w in widths)
    return ResNet(
        num_classes=num_classes,
        stage_sizes=stages,
        block=block,
        widths=widths,
        family=model.family,
        residual=model.residual,
        shortcut=model.shortcut,
        norm=model.norm,
        preactivation=model.preactivation,
        zero_init_last=model.zero_init_last,
        axis_name=axis_name,
        dtype=DTYPES[model.dtype],
        weight_grad=model.weight_grad,
        scan_blocks=model.scan_blocks,
        dirac=model.dirac,
        shortcut_scale=float(model.shortcut_scale),
        **kwargs,
    )


def _resnet_layout(model: ml_collections.ConfigDict) -> Layout:
    return _build_resnet(model, num_classes=1, axis_name=None).layout()  # No head in a layout.


def _resnet_label(model: dict[str, Any]) -> str:
    """E.g. 'ResNet-56', 'plain-56 (no BN)', 'plain-56 (Dirac param)', 'ResNet-56 (shortcut
    x0.5)'; a config.json from before `dirac` and `shortcut_scale` reads as their defaults."""
    name = f'{"ResNet" if model["residual"] else "plain"}-{model["depth"]}'
    notes = ['no BN'] if model['norm'] == 'none' else []
    if model.get('dirac', 'none') != 'none':
        notes.append(f'Dirac {model["dirac"]}')
    if model.get('shortcut_scale', 1.0) != 1.0:
        notes.append(f'shortcut x{model["shortcut_scale"]:g}')
    return name + (f' ({", ".join(notes)})' if notes else '')


for _name in ('cifar', 'imagenet'):
    register(
        ModelFamily(
            name=_name,
            validate=_validate_resnet,
            build=_build_resnet,
            architecture_keys=(
                'depth',
                'residual',
                'shortcut',
                'norm',
                'width',
                'preactivation',
                'dirac',
                'shortcut_scale',
            ),
            label=_resnet_label,
            layout=_resnet_layout,
        )
    )
