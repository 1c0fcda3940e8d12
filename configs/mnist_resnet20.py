"""ResNet-20 on MNIST (28x28 grayscale), 15 epochs of the CIFAR recipe, no flips.

  python scripts/train.py --config configs/mnist_resnet20.py --workdir runs/mnist
  python scripts/train.py --config configs/mnist_resnet20.py:fashion --workdir runs/fashion

The `fashion` argument switches to Fashion-MNIST (same shapes).
"""

from resjax import config_lib


def get_config(arg=None):
    args = set((arg or '').split(','))
    config = config_lib.default_config()
    config.dataset.name = 'fashion_mnist' if 'fashion' in args else 'mnist'
    config.dataset.augment = 'none'  # Flipped digits are other digits.
    config.train.steps = 7_000  # ~15 epochs of 60k at batch 128
    config.train.eval_every_steps = 1_000
    config.train.checkpoint_every_steps = 1_000
    config.probes.every_steps = 500
    return config_lib.finalize(config, ','.join(sorted(args - {'fashion'})))
