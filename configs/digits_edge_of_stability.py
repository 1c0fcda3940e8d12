"""Edge of stability in miniature (Cohen et al. 2021): full-batch gradient descent on 1,024
digits with a ResNet-8 without BatchNorm; the sharpness lambda_max (probes.hessian_every_steps)
rises towards 2/lr ("progressive sharpening") and stops there. With cross-entropy it falls
again once the training loss nears zero, as Cohen et al. report (their Appendix on CE).

  python scripts/train.py --config configs/digits_edge_of_stability.py --workdir runs/eos
  python scripts/train.py --config configs/digits_edge_of_stability.py \
      --config.train.lr=0.1 --workdir runs/eos_lr0.1

Measured (metrics.jsonl 'hessian/lambda_max' vs 'hessian/two_over_lr'):
lr 0.2 (2/lr = 10): 21.9 at init, 1.3 after the first steps' catapult, then 3.9, 8.2, 7.5,
8.75 at step 125 (loss 0.76 -> 0.04), then down to 1.8 by step 425 (loss 8e-4).
lr 0.1 (2/lr = 20): 21.9, 53.9, then 20.2 and 19.7 at steps 50 and 75, then 11-14.

Plain gradient descent: one batch of every training example each step, no momentum, no weight
decay, constant learning rate; the sharpness probe runs on that same full batch, i.e. on the
Hessian of the loss GD descends.
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'digits'
    config.dataset.augment = 'none'
    config.dataset.num_train_examples = 1024
    config.model.depth = 8
    config.model.width = 0.5
    config.model.norm = 'none'  # BN nets here memorised before sharpening (lr 0.05 and 0.4).
    config.train.batch_size = 1024  # = num_train_examples: full-batch GD.
    config.train.eval_batch_size = 360
    config.train.steps = 400
    config.train.lr = 0.2  # 2 / lr = 10
    config.train.momentum = 0.0
    config.train.weight_decay = 0.0
    config.train.schedule = 'constant'
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 200
    config.train.checkpoint_every_steps = 200
    config.probes.hessian_every_steps = 25
    config.probes.hessian_iters = 20
    config.probes.hessian_batch = 'fixed'  # the full batch
    config.probes.bn_mode = 'train'
    return config_lib.finalize(config, arg)
