"""Can a block learn the identity? The regression experiment of resjax/identity.py on the
feature maps entering stage 2 of the digits ResNet-20 (16 channels of 8x8).

  python scripts/train.py --config configs/digits_resnet20.py --workdir runs/digits
  python scripts/identity.py --config configs/identity.py --workdir runs/identity \
      --config.identity.source=runs/digits

Any trained CIFAR-family run can be the source (its dataset and stage widths come with it),
e.g. ResNet-56 of the image-folder study, at the settings that fit 2 CPU cores (`:cpu`):

  python scripts/identity.py --config configs/identity.py:cpu --workdir runs/identity_c10f \
      --config.identity.source=runs/study_c10f/runs/resnet56_bn_s0

Without a source the features are those of a freshly initialised model of `model` on `dataset`
(for a quick look, and the tests). Writes identity.json and identity.png to the workdir.
"""

import ml_collections

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'digits'  # Only read without a source.
    config.dataset.augment = 'none'
    config.train.eval_batch_size = 360

    c = config.identity = ml_collections.ConfigDict()
    c.source = ''  # A trained run's workdir ('' = a freshly initialised `model`).
    c.stage = 2  # The features entering this stage (1 = the stem's output).
    c.examples = 2048  # Training images whose features are fitted (at most the split).
    c.eval_examples = 512  # Test images for the held-out error.
    c.depths = (1, 3, 9)  # Blocks per stack.
    c.targets = ('identity', 'near_identity', 'random')
    c.stacks = ('plain', 'residual', 'plain_dirac', 'linear_plain', 'linear_residual')
    c.delta = 0.1  # ||delta(x)|| / ||x|| of the near-identity target.
    c.lrs = (0.01, 0.1)  # Constant SGD lrs (momentum 0.9); each stack is read at its best.
    c.seeds = (0, 1)  # Stack inits; the fixed random blocks of the targets use `seed`.
    c.steps = 400
    c.batch = 128
    c.eval_every = 25
    if arg == 'cpu':
        # What a 2-core CPU can run with CIFAR features (8 channels of 32x32, width 0.5;
        # docs/benchmarks.md): one seed, fewer and smaller steps, fewer features. The depths,
        # targets, stacks and lrs stay.
        c.examples, c.eval_examples, c.seeds = 512, 256, (0,)
        c.steps, c.batch, c.eval_every = 150, 32, 50
    elif arg == 'smoke':
        config.model.width = 0.25
        c.examples, c.eval_examples = 256, 64
        c.depths, c.steps, c.batch, c.eval_every = (1, 2), 20, 32, 10
    elif arg:
        raise ValueError(f'unknown config argument {arg!r}: use cpu or smoke')
    return config
