"""Plain vs residual on real CIFAR-10 images on a 2-core CPU, with the constructed-identity run.

  python scripts/study.py --config configs/study_cifar10_folder.py --workdir runs/study_c10f \
      --config.dataset.data_dir=ROOT

ROOT holds CIFAR-10 as image files, `ROOT/{train,test}/<class>/<image>` (50,000 and 10,000 PNG
or JPEG files of 32x32; several public repositories hold such a dump), read by the
`image_folder` dataset with the paper's CIFAR augmentation (pad 4, random 32x32 crop, flip).

Runs (BatchNorm, option A): plain-20, ResNet-20, plain-56 and ResNet-56 of seed 0, plain-56
and ResNet-56 of seed 1 (the question's pair, so its findings have a seed spread); then, from
the trained seed-0 nets, the constructed-solution sweep (`study.constructed_lrs`): at each of
the constant lrs 0.001, 0.01 and 0.1, 100 steps of plain-56 and ResNet-56 built from the
depth-20 nets (their blocks copied, the added blocks identities: resjax/construct.py), the
depth-20 nets restarted and plain-56 of random init restarted (15 runs); then the LMC partners
of the seed-0 depth-56 pair (same init, another data order). Inspection: the Hessian spectrum,
the lesions (ResNet branches and plain blocks), the block probes and the loss barriers. What is
reduced from the paper (64k steps of batch 128, widths 16/32/64) so that the study fits a 2-core
CPU in about 3 hours (docs/benchmarks.md): widths halved (8/16/32, `model.width=0.5`) and 800
steps of batch 128 (about 2 epochs) on a cosine schedule. Degradation shows early in training
(He et al. 2015, Fig. 1 and 6: the plain nets' curves separate from the start), so a short
budget can pose the question; it cannot reach the paper's
error rates. Raise `train.steps` (the study resumes each run) to go further. The file is also
the grid's base training config; one run alone:

  python scripts/train.py --config configs/study_cifar10_folder.py --workdir runs/c10f_plain56 \
      --config.dataset.data_dir=ROOT --config.model.depth=56 --config.model.residual=False
"""

from resjax import config_lib, study_config


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'image_folder'
    config.dataset.augment = 'cifar'
    config.model.width = 0.5
    config.train.steps = 800
    config.train.batch_size = 128
    config.train.eval_batch_size = 500
    config.train.schedule = 'cosine'
    config.train.warmup = 'constant'
    config.train.warmup_steps = 40  # lr/10 first, as the paper's warm-up for its deepest nets.
    config.train.log_every_steps = 25
    config.train.eval_every_steps = 400
    config.train.checkpoint_every_steps = 200
    config.train.keep_checkpoints = 1
    config.probes.every_steps = 100
    config.probes.hessian_every_steps = 200
    config.probes.hessian_iters = 6
    config.probes.hessian_batch = 'fixed'
    # The per-filter angle from init beside the distance (scale-invariant under BN; (c)).
    config.probes.init_angle_every_steps = 100

    config.study = study_config.default_study_config()
    config.study.depths = (20, 56)
    config.study.residual = (False, True)
    config.study.norms = ('batch',)
    # A second seed for the depth-56 pair, the question's nets: its findings compare the
    # seed-to-seed spread with each difference.
    config.study.seeds = (0, 1)
    config.study.exclude = ('depth=20 seed=1',)
    config.study.constructed = ('20->56',)
    # (b) as a controlled sweep, after the grid (seed 0: the seed whose grid has the depth-20
    # sources): at each constant lr, 100 steps of plain-56 and ResNet-56 built from the
    # depth-20 nets, the depth-20 nets restarted, and plain-56 of random init restarted.
    config.study.constructed_lrs = (0.001, 0.01, 0.1)
    # 100 steps, not the default 200, so that the whole study fits about 3 hours on 2 cores.
    config.study.constructed_steps = 100
    # 3 points: two logged training rows (25 x 128 examples at ~45% error) differ by up to
    # ~2.5 points by sampling alone, so a smaller margin could never say a net keeps its start.
    config.study.degradation_margin = 0.03
    # (c) on loss barriers: LMC partners of the depth-56 pair (seed 0: same init, another data
    # order), and figure 14's lines with BN statistics recomputed at each point.
    config.study.lmc = True
    # The lesions are (a)'s first test (plain blocks replaced by the identity beside the
    # ResNet's branches), on 2,000 test images to keep 60 evaluations short. No 2-D landscape:
    # 81 grid points x 512 examples x 2 nets cost more than the rest of the inspection here.
    config.study.inspect.figures = ('spectrum', 'lesion', 'blocks', 'barriers')
    config.study.inspect.eval_examples = 2000
    config.study.inspect.bn_examples = 512
    config.study.inspect.examples = 512
    config.study.inspect.batch = 256
    config.study.inspect.lanczos_order = 16
    config.study.inspect.slq_draws = 1
    config.study.inspect.grid = 9
    config.study.inspect.range = 1.0
    config = config_lib.finalize(config, arg)
    if arg and 'smoke' in arg:
        study_config.shrink_for_smoke(config.study)
    return config
