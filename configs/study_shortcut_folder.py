"""What the shortcut provides (issue 25), on real CIFAR-10 images on a 2-core CPU.

  python scripts/study.py --config configs/study_shortcut_folder.py --workdir runs/study_sc \
      --config.dataset.data_dir=ROOT

ROOT as for configs/study_cifar10_folder.py, whose recipe this is (BatchNorm, option A,
widths 8/16/32, batch 128, cosine with 40 steps at lr/10 first). Runs, seeds 0 and 1: plain-56
and ResNet-56 (the grid), then their `study.variants`: plain-56 with Dirac-parametrised convs
(`model.dirac=param`), plain-56 initialised at the identity (`model.dirac=init`) and ResNet-56
with its shortcut scaled by 0.5 (`model.shortcut_scale=0.5`): 10 runs. The finding
`question_shortcut` compares each Dirac net's final test error with the midpoint of plain-56's
and ResNet-56's of its seed, and says which answer the runs support: the identity as the zero
of the parametrisation, the starting point, or the explicit paths. A difference counts beyond
`study.degradation_margin` = 0.03 (study_cifar10_folder.py's; a 10,000-image test error has a
sampling spread of about 0.5 points) and the seed spread.

What is reduced, so that the 10 runs fit about 90 minutes here (a depth-56 step at width 0.5
takes ~1.2 s: 10 x 400 steps ~ 80 minutes, plus the evaluations and probes): 400 steps a run
(about one epoch; the study_cifar10_folder.py runs have 800, the paper 64k), evaluated once,
at the end; signal probes every 200 steps only (the finding needs a finished pair with probe
rows), no sharpness probe, no angle probe. Depth 56 alone: no depth-20 nets, no constructed
sweep, no LMC partners, and no inspection figures (the finding reads the final test errors
only; the lesions of the variant nets would cost about as much as the training). The verdict
is about the nets after one epoch: raise `train.steps` (the study resumes each run) to ask it
of longer training. One run alone:

  python scripts/train.py --config configs/study_shortcut_folder.py --workdir runs/sc_dirac \
      --config.dataset.data_dir=ROOT --config.model.residual=False --config.model.dirac=param
"""

import importlib.util
import os

from resjax import config_lib, study_config


def _folder_config():
    """configs/study_cifar10_folder.py's config (the recipe this study changes)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'study_cifar10_folder.py')
    spec = importlib.util.spec_from_file_location('study_cifar10_folder', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg=None):
    config = _folder_config()
    config.model.depth = 56
    config.train.steps = 400
    config.train.eval_every_steps = 400
    config.probes.every_steps = 200
    config.probes.hessian_every_steps = 0
    config.probes.init_angle_every_steps = 0

    s = config.study
    s.depths = (56,)
    s.residual = (False, True)
    s.seeds = (0, 1)
    s.exclude = ()
    s.constructed = ()
    s.constructed_lrs = ()
    s.lmc = False
    s.variants = (
        'diracparam: depth=56 residual=false -> model.dirac=param',
        'diracinit: depth=56 residual=false -> model.dirac=init',
        'shortcut0.5: depth=56 residual=true -> model.shortcut_scale=0.5',
    )
    s.inspect.figures = ()
    config = config_lib.finalize(config, arg)
    if arg and 'smoke' in arg:
        study_config.shrink_for_smoke(config.study)
    return config
