"""Inspects checkpoints read-only: numbers on stdout, PNG + JSON/npz in --out.

  python scripts/inspect_checkpoint.py --workdir runs/plain56 --workdir runs/resnet56 \
      --out figs --probes summary,eval,hessian,landscape2d [--step N] [--examples K]

Probes (README "Inspecting a checkpoint"): summary, eval, hessian, spectrum, landscape1d,
landscape2d, interpolate, lesion, shattering, signals, blocks. Exit codes: 0 done; 2 bad input
(one line: missing workdir or step, not a resjax run, a checkpoint of another model, bad flags).
"""

import sys

import jax
from absl import app, flags, logging

from resjax import inspection, logs

D = inspection.Options()
flags.DEFINE_multi_string('workdir', None, 'Run directories (repeat to compare on one figure).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest of each workdir).')
flags.DEFINE_string('out', None, 'Directory for figures and numbers.')
flags.DEFINE_list('probes', ['summary'], f'Comma-separated: {",".join(inspection.PROBES)}.')
flags.DEFINE_integer('examples', D.examples, 'Probe examples K (first K training examples).')
flags.DEFINE_integer('batch', D.batch, 'Examples per forward / HVP call.')
flags.DEFINE_enum('bn_mode', D.bn_mode, ['eval', 'train'], 'BatchNorm mode of loss probes.')
flags.DEFINE_integer('seed', D.seed, 'Seed of directions, Lanczos and Hutchinson draws.')
flags.DEFINE_integer('top_k', D.top_k, 'hessian: number of top eigenvalues.')
flags.DEFINE_integer('lanczos_order', D.lanczos_order, 'hessian/spectrum: Lanczos steps (HVPs).')
flags.DEFINE_integer('trace_samples', D.trace_samples, 'hessian: Hutchinson samples.')
flags.DEFINE_integer('slq_draws', D.slq_draws, 'spectrum: SLQ start vectors.')
flags.DEFINE_integer('grid', D.grid, 'Landscape points per axis / interpolation points.')
flags.DEFINE_float('range', D.range, 'Landscape coefficients in [-range, range].')
flags.DEFINE_integer('chunk', D.chunk, 'Grid points per vmapped call.')
flags.DEFINE_enum('direction', D.direction, ['random', 'eigen', 'gradient'], 'Landscape axes.')
flags.DEFINE_enum('biasbn', D.biasbn, ['zero', 'include'], 'Random directions on 1-D leaves.')
flags.DEFINE_float('alpha_min', D.alpha_min, 'interpolate: first alpha.')
flags.DEFINE_float('alpha_max', D.alpha_max, 'interpolate: last alpha.')
flags.DEFINE_string('to', None, 'interpolate: start from this workdir (default: the init).')
flags.DEFINE_integer('eval_examples', D.eval_examples, 'eval: examples per split (0 = all).')
flags.DEFINE_integer('shatter_points', D.shatter_points, 'shattering: inputs per line.')
flags.DEFINE_float('shatter_radius', D.shatter_radius, 'shattering: half-length of each line.')
flags.mark_flags_as_required(['workdir', 'out'])
FLAGS = flags.FLAGS


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag is one line and exit code 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f'error: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
        sys.exit(2)
    logs.quiet_logs(logging.ERROR)  # orbax warns about the read-only manager on every load.
    # JAX logs its platform search at INFO when the backend starts: keep bad-input errors to
    # one line by starting it quietly.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    jax.devices()
    logging.set_verbosity(verbosity)
    names = [f.name for f in inspection.dataclasses.fields(inspection.Options)]
    opts = inspection.Options(**{n: FLAGS[n].value for n in names})
    try:
        results = inspection.inspect(FLAGS.workdir, FLAGS.probes, FLAGS.out, opts, FLAGS.step)
    except inspection.InspectError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    for name, seconds in results['timings'].items():
        print(f'{name}: {seconds:.1f} s')
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
