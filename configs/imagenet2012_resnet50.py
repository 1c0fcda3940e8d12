"""ResNet-50 on ImageNet (He et al. 2015, §3.4), as most reproductions run it.

Batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at epochs 30, 60 and 80
of 90 (the paper divides "when the error plateaus", up to 60e4 iterations), random-resized
224 crops + flips (the paper's scale augmentation samples the shorter side in [256, 480]),
option B shortcuts. Needs `imagenet2012` prepared in TFDS's data_dir (manual download).

  python scripts/train.py --config configs/imagenet2012_resnet50.py --workdir runs/in_r50
  ... :plain --config.model.depth=34   # plain-34, the paper's Table 2 comparison
"""

from resjax import config_lib

STEPS_PER_EPOCH = 1_281_167 // 256


def get_config(arg=None):
    args = set((arg or '').split(','))
    config = config_lib.default_config()
    config.dataset.name = 'imagenet2012'
    config.dataset.augment = 'imagenet'
    config.dataset.image_size = 224
    config.model.family = 'imagenet'
    config.model.depth = 50
    config.model.shortcut = 'projection'
    config.model.residual = 'plain' not in args
    config.train.batch_size = 256
    config.train.eval_batch_size = 1_000
    config.train.steps = 90 * STEPS_PER_EPOCH
    config.train.lr_boundaries = (30 / 90, 60 / 90, 80 / 90)
    config.train.log_every_steps = 500
    config.train.eval_every_steps = 5 * STEPS_PER_EPOCH
    config.train.checkpoint_every_steps = STEPS_PER_EPOCH
    config.probes.every_steps = 5_000
    return config_lib.finalize(config, ','.join(sorted(args - {'plain'})))
