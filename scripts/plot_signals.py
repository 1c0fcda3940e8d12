"""Per-layer signal figures from one or more training runs' probe rows.

  python scripts/plot_signals.py --workdir runs/plain56 --workdir runs/resnet56 --out figs
      [--steps 0,-1]

Writes, as PNG + JSON: grad_norm, act_grad_norm, act_std and gsc profiles (log y, layer
index on x, one colour per run, one line style per step) and a layers x steps gradient-norm
heatmap per run.
"""

import sys

from absl import app, flags

from resjax import plots

flags.DEFINE_multi_string('workdir', None, 'Run directories (repeat to compare).')
flags.DEFINE_string('out', None, 'Directory for the figures.')
flags.DEFINE_list('steps', [], 'Steps to draw (-1 = last); default first, middle, last.')
flags.mark_flags_as_required(['workdir', 'out'])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        steps = [int(s) for s in FLAGS.steps]
        paths = plots.plot_signals(FLAGS.workdir, FLAGS.out, steps)
    except (OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    print('\n'.join(paths))


if __name__ == '__main__':
    app.run(main)
