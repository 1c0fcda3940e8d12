"""Inspects checkpoints read-only: numbers on stdout, PNG + JSON/npz in --out.

  python scripts/inspect_checkpoint.py --workdir runs/plain56 --workdir runs/resnet56 \
      --out figs --probes summary,eval,hessian,landscape2d [--step N] [--examples K]

Probes (docs/inspection.md): summary, eval, hessian, spectrum, landscape1d,
landscape2d, interpolate, lesion, shattering, signals, blocks. Exit codes: 0 done; 2 bad input
(one line: missing workdir or step, not a resjax run, a checkpoint of another model, bad flags).
"""

import dataclasses
import logging as std_logging
import sys
import typing

import jax
from absl import app, flags, logging

from resjax import inspection, logs

FLAGS = flags.FLAGS
# The flag of each `inspection.Options` field type (a new type is a KeyError, not a guess).
_DEFINE = {
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
    str | None: flags.DEFINE_string,
}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags: one per `inspection.Options` field, with its type, default
    and help (enums: its `choices`). On demand, so that tests can import this file."""
    fv = flag_values
    flags.DEFINE_multi_string(
        'workdir', None, 'Run directories (repeat to compare on one figure).', flag_values=fv
    )
    flags.DEFINE_integer(
        'step', None, 'Checkpoint step (default: the latest of each workdir).', flag_values=fv
    )
    flags.DEFINE_string('out', None, 'Directory for figures and numbers.', flag_values=fv)
    probes = ','.join(inspection.PROBES)
    flags.DEFINE_list('probes', ['summary'], f'Comma-separated: {probes}.', flag_values=fv)
    types = typing.get_type_hints(inspection.Options)
    for field in dataclasses.fields(inspection.Options):
        name, default, doc = field.name, field.default, field.metadata['help']
        if field.metadata['choices']:
            flags.DEFINE_enum(name, default, list(field.metadata['choices']), doc, flag_values=fv)
        else:
            _DEFINE[types[name]](name, default, doc, flag_values=fv)
    flags.mark_flags_as_required(['workdir', 'out'], flag_values=fv)


def options(flag_values: flags.FlagValues = FLAGS) -> inspection.Options:
    """The parsed flags as `inspection.Options`."""
    fields = dataclasses.fields(inspection.Options)
    return inspection.Options(**{f.name: flag_values[f.name].value for f in fields})


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
    # orbax warns about the read-only manager on every load. A standard logging level: absl's
    # `logging.ERROR` is -2, which would let every orbax record through.
    logs.quiet_logs(std_logging.ERROR)
    # JAX logs its platform search at INFO when the backend starts: keep bad-input errors to
    # one line by starting it quietly.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    jax.devices()
    logging.set_verbosity(verbosity)
    try:
        results = inspection.inspect(FLAGS.workdir, FLAGS.probes, FLAGS.out, options(), FLAGS.step)
    except inspection.InspectError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    for name, seconds in results['timings'].items():
        print(f'{name}: {seconds:.1f} s')
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=parse_flags)
