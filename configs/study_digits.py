"""The plain-vs-residual study on scikit-learn's digits: a grid of training runs and a report.

  python scripts/study.py --config configs/study_digits.py --workdir runs/study
  python scripts/study.py --config configs/study_digits.py:smoke --workdir /tmp/study_smoke

Plain and residual CIFAR-family nets at depths 20 and 56, with BatchNorm and without, one seed,
the same optimizer and step budget (8 runs; run time: docs/benchmarks.md), then the
inspection figures (Hessian spectrum, 2-D loss landscape, lesions) of the deepest nets. The
file is also an ordinary training config (the grid's base): any single run of the grid trains
alone with

  python scripts/train.py --config configs/study_digits.py --workdir runs/plain56 \
      --config.model.depth=56 --config.model.residual=False

`study.*` keys (resjax/study/__init__.py, docs/study.md): `depths`, `residual`, `norms`,
`seeds` (the grid, a product), `exclude` (grid points left out, 'depth=110 residual=false'),
`overrides` (per-run changes, 'norm=none -> train.lr=0.02'), `degradation_margin` (the rule
that decides "degradation reproduced"), `inspect` (sizes of the inspection figures,
`max_depth` of the nets inspected).
"""

from resjax import config_lib, study_config


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'digits'
    config.dataset.augment = 'none'  # 8x8 digits: crops and flips change the class.
    # Budget: 300 steps of batch 64 (~13 epochs of 1,438 images), so that the 8 runs and the
    # inspection fit a laptop CPU (depth-56 runs dominate; timings in docs/benchmarks.md).
    config.train.steps = 300
    config.train.batch_size = 64
    config.train.eval_batch_size = 360
    config.train.schedule = 'cosine'
    # lr/10 for the first 40 steps: a linear ramp starts at lr 0, where the sharpness probe's
    # 2/lr is undefined.
    config.train.warmup = 'constant'
    config.train.warmup_steps = 40
    config.train.weight_decay = 5e-4
    config.train.log_every_steps = 20
    config.train.eval_every_steps = 50
    config.train.checkpoint_every_steps = 150
    config.train.keep_checkpoints = 1
    # Signal probes (figures 2 and 3) and the sharpness probe (figure 4).
    config.probes.every_steps = 100
    config.probes.hessian_every_steps = 75
    config.probes.hessian_iters = 6
    config.probes.hessian_batch = 'fixed'

    config.study = study_config.default_study_config()
    config.study.depths = (20, 56)
    config.study.residual = (False, True)
    config.study.norms = ('batch', 'none')
    config.study.seeds = (0,)
    # Without BN, a lower lr than the BN recipe's 0.1. (Plain-56 without BN stayed at chance
    # for 120 steps at lr 0.02: on 8x8 inputs its forward signal and gradients vanish at init,
    # ~1e-6 from stem to last block; ResNet-56 without BN diverges at step 2 even at lr/10 (its
    # forward signal explodes). The study reports both rather than hides them.)
    config.study.overrides = ('norm=none -> train.lr=0.02',)
    config.study.inspect.examples = 256
    config.study.inspect.batch = 128
    config.study.inspect.lanczos_order = 20
    config.study.inspect.slq_draws = 2
    config.study.inspect.grid = 11
    config.study.inspect.range = 1.0
    config = config_lib.finalize(config, arg)
    if arg and 'smoke' in arg:
        study_config.shrink_for_smoke(config.study)
    return config
