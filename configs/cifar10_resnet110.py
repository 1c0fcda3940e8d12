"""ResNet-110 on CIFAR-10 with the paper's warm-up (He et al. 2015, §4.2).

"We use 0.01 to warm up the training until the training error is below 80% (about 400
iterations), and then go back to 0.1": here a fixed 400 steps at lr/10.

  python scripts/train.py --config configs/cifar10_resnet110.py --workdir runs/c10_r110
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'cifar10'
    config.model.depth = 110
    config.train.warmup = 'constant'
    config.train.warmup_steps = 400
    config.probes.every_steps = 1_000
    return config_lib.finalize(config, arg)
