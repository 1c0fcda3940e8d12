"""ResNet-20 on CIFAR-100 with the CIFAR-10 recipe (100 classes; nothing else changes).

python scripts/train.py --config configs/cifar100_resnet20.py --workdir runs/c100_r20
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'cifar100'
    config.probes.every_steps = 1_000
    return config_lib.finalize(config, arg)
