"""Model construction from the `config.model` block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from resjax.models.conv import WEIGHT_GRADS
from resjax.models.resnet import IMAGENET_STAGES, NORMS, SHORTCUTS, ResNet

__all__ = ['WEIGHT_GRADS', 'ResNet', 'create_model', 'validate_model_config']

FAMILIES = ('cifar', 'imagenet')
DTYPES = {
    'float32': jnp.float32,
    'bfloat16': jnp.bfloat16,
    'float16': jnp.float16,
    'float64': jnp.float64,  # numerical tests only (needs jax_enable_x64)
}


def validate_model_config(model: ml_collections.ConfigDict) -> None:
    """Raises ValueError (one line, naming the key and the fix) for an impossible model."""
    if model.family not in FAMILIES:
        raise ValueError(f'model.family={model.family!r} is unknown; use one of {FAMILIES}')
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
    if model.dtype not in DTYPES:
        raise ValueError(f'model.dtype={model.dtype!r} is unknown; use one of {tuple(DTYPES)}')
    if model.weight_grad not in WEIGHT_GRADS:
        raise ValueError(
            f'model.weight_grad={model.weight_grad!r} is unknown; use one of {WEIGHT_GRADS}'
        )
    if not isinstance(model.scan_blocks, bool):
        raise ValueError(f'model.scan_blocks={model.scan_blocks!r} must be True or False')
    if model.scan_blocks and model.weight_grad == 'xla' and jax.default_backend() == 'cpu':
        raise ValueError(
            "model.scan_blocks=True with model.weight_grad='xla' runs the gradient convolutions "
            "as naive loops on XLA:CPU (~80x slower); use weight_grad='auto'"
        )
    if model.width <= 0:
        raise ValueError(f'model.width={model.width} must be a positive width multiplier')


def create_model(
    model: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None, **kwargs
) -> ResNet:
    """Builds the `ResNet` described by `config.model` (validated first).

    `model.width` multiplies the stage widths (16/32/64 for CIFAR, 64/.../512 for ImageNet);
    `axis_name` makes BatchNorm average its statistics over that pmap axis (synchronised BN).
    """
    validate_model_config(model)
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
        **kwargs,
    )
