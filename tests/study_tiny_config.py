"""The tests' tiny study, as a config file so that `scripts/study.py` subprocesses can run it.

  python scripts/study.py --config tests/study_tiny_config.py --workdir W
  python scripts/study.py --config tests/study_tiny_config.py:parallel --workdir W

Two small depths, plain and residual, BN, a few steps. To save compile time ResNet-14 is left
out, only the depth-8 nets carry the signal probes and are inspected, and only ResNet-8 the
sharpness probe: every figure still has data. `parallel`: the depth-8 nets and plain-14 built
from plain-8 (three runs, one waiting for another), no inspection figures.
"""

from resjax import config_lib, study_config


def get_config(arg=None):
    c = config_lib.default_config()
    c.dataset.name = 'digits'
    c.dataset.augment = 'none'
    c.model.width = 0.25
    c.train.steps = 6
    c.train.batch_size = 16
    c.train.eval_batch_size = 120
    c.train.schedule = 'constant'
    c.train.lr = 0.05
    c.train.log_every_steps = 2
    c.train.eval_every_steps = 3
    c.train.checkpoint_every_steps = 6
    c.probes.every_steps = 3
    c.probes.hessian_every_steps = 3
    c.probes.hessian_iters = 3
    c.probes.hessian_batch = 'fixed'
    c.study = study_config.default_study_config()
    c.study.depths = (8, 14)
    c.study.norms = ('batch',)
    c.study.exclude = ('depth=14 residual=true',)
    c.study.overrides = (
        'depth=14 residual=false -> train.lr=0.03',
        'depth=14 -> probes.every_steps=0 probes.hessian_every_steps=0',
        'residual=false -> probes.hessian_every_steps=0',
    )
    c.study.constructed = ('8->14',)  # plain-14 built from plain-8, probes off as plain-14's.
    s = c.study.inspect
    s.max_depth = 8
    s.examples, s.batch, s.lanczos_order, s.slq_draws, s.grid, s.chunk = 32, 32, 4, 1, 5, 25
    if arg == 'parallel':
        c.study.exclude = ('depth=14',)
        s.figures = ()
    return config_lib.finalize(c, None)  # `parallel` is this file's own argument.
