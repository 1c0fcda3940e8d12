"""ResNet-20 on scikit-learn's bundled digits (1,438 train / 359 test 8x8 images).

The offline default: no download, no TensorFlow. Reaches ~98% test accuracy (its run time:
docs/benchmarks.md).

  python scripts/train.py --config configs/digits_resnet20.py --workdir runs/digits
  python scripts/train.py --config configs/digits_resnet20.py:smoke --workdir /tmp/smoke

Any model of the family by override, e.g. plain-56:
  --config.model.depth=56 --config.model.residual=False
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'digits'
    config.dataset.augment = 'none'  # 8x8 digits: crops and flips change the class.
    config.train.steps = 600  # ~53 epochs of 1,438 images at batch 128.
    config.train.eval_batch_size = 360
    config.train.schedule = 'cosine'
    config.train.warmup_steps = 50
    config.train.weight_decay = 5e-4
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 200
    config.train.checkpoint_every_steps = 200
    config.probes.every_steps = 100
    return config_lib.finalize(config, arg)
