"""The plain-vs-residual study at paper scale: He et al. 2015, Fig. 6 on CIFAR-10 (GPU / pod).

  python scripts/study.py --config configs/study_cifar10.py --workdir runs/study_c10

Plain-20/32/44/56 and ResNet-20/32/44/56/110 (option A shortcuts), BatchNorm, the paper's
recipe (configs/cifar10_resnet20.py: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1
divided by 10 at 32k and 48k of 64k steps; ResNet-110 warms up at lr 0.01 for 400 steps).
Nine runs of 64k steps: about a GPU-day in all. Add the no-BN nets with
`--config.study.norms=batch,none` (they need a lower lr: see `study.overrides`). The file is
also the grid's base training config; one run alone:

  python scripts/train.py --config configs/study_cifar10.py --workdir runs/c10_plain56 \
      --config.model.depth=56 --config.model.residual=False
"""

from resjax import config_lib, study_config


def get_config(arg=None):
    config = config_lib.default_config()  # The defaults are the paper's recipe.
    config.dataset.name = 'cifar10'
    config.train.eval_every_steps = 1_000  # Test-error curves of Fig. 6.
    config.probes.every_steps = 4_000
    config.probes.hessian_every_steps = 2_000
    config.probes.hessian_iters = 20
    config.probes.hessian_batch = 'fixed'

    config.study = study_config.default_study_config()
    config.study.depths = (20, 32, 44, 56, 110)
    config.study.residual = (False, True)
    config.study.norms = ('batch',)
    config.study.seeds = (0,)
    config.study.exclude = ('depth=110 residual=false',)  # The paper has no plain-110.
    config.study.overrides = (
        'depth=110 -> train.warmup=constant train.warmup_steps=400',
        'norm=none -> train.lr=0.01',
    )
    config.study.inspect.examples = 2048
    config.study.inspect.batch = 256
    config.study.inspect.lanczos_order = 80
    config.study.inspect.slq_draws = 3
    config.study.inspect.grid = 41
    config.study.inspect.range = 1.0
    config = config_lib.finalize(config, arg)
    if arg and 'smoke' in arg:
        study_config.shrink_for_smoke(config.study)
    return config
