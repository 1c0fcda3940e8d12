"""ResNet-20 on CIFAR-10, the paper's recipe (He et al. 2015, §4.2).

Batch 128, SGD momentum 0.9, weight decay 1e-4 (L2), lr 0.1 divided by 10 at 32k and 48k,
64k steps; 4-pixel pad + random 32x32 crop + horizontal flip, per-channel normalisation.
The paper trains on 45k images and holds out 5k; resjax trains on all 50k and evaluates on the
10k test images.

  python scripts/train.py --config configs/cifar10_resnet20.py --workdir runs/c10_r20

Other depths and the plain counterparts by override:
  --config.model.depth=56 --config.model.residual=False
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()  # The defaults are this recipe.
    config.dataset.name = 'cifar10'
    config.probes.every_steps = 1_000
    return config_lib.finalize(config, arg)
