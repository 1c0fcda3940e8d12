"""ResNet-18 on a local image folder laid out as <root>/<split>/<label>/<image>
(splits 'train' and 'test'), 64x64 random-resized crops: the tf.data loader (the `tfds` extra).
With --config.dataset.augment=cifar a folder of same-sized images is decoded into memory instead
(no TensorFlow; docs/config.md, `dataset.loader`).

  python scripts/train.py --config configs/image_folder.py --workdir runs/folder \
      --config.dataset.data_dir=/path/to/root
"""

from resjax import config_lib


def get_config(arg=None):
    config = config_lib.default_config()
    config.dataset.name = 'image_folder'
    config.dataset.augment = 'imagenet'
    config.dataset.image_size = 64
    config.model.family = 'imagenet'
    config.model.depth = 18
    config.model.shortcut = 'projection'
    config.train.steps = 10_000
    config.train.batch_size = 64
    config.train.eval_batch_size = 64
    config.train.schedule = 'cosine'
    config.train.warmup_steps = 200
    config.train.eval_every_steps = 1_000
    config.train.checkpoint_every_steps = 1_000
    config.probes.every_steps = 500
    return config_lib.finalize(config, arg)
