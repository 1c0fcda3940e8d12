"""Trains a plain or residual CNN: `python scripts/train.py --config configs/X.py --workdir W`.

`--config` and `--workdir` are required. A config is a file in configs/ (its docstring gives
the command that runs it). Change any key with `--config.<key>=<value>` (e.g.
`--config.model.depth=56 --config.model.residual=False`; the keys are listed at the end of
`--help`, their meanings in docs/config.md). Append `:smoke` to the file
(`--config configs/X.py:smoke`) to shrink the run to about a minute on a CPU with every code
path on. Rerunning the same command on the same workdir resumes it.

Exit codes: 0 done; 2 bad config, data or workdir (one line, before compiling); 3 stopped on a
non-finite loss or gradient.

Multi-host (TPU pod slices, several GPU hosts): run the same command on every host with
`--distributed` (or RESJAX_DISTRIBUTED=1); on a TPU VM nothing else is needed, elsewhere pass
`--coordinator_address=host:port --num_processes=N --process_id=i`.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resjax import config_lib, logs, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    None,
    'Required. Training config file, configs/<name>.py[:smoke]; its keys are listed below.',
    lock_config=True,
)
flags.DEFINE_string(
    'workdir', None, 'Required. Directory for checkpoints, metrics and config.json.'
)
flags.DEFINE_bool(
    'distributed',
    os.environ.get('RESJAX_DISTRIBUTED', '') not in ('', '0'),
    'Start jax.distributed first (multi-host); default from RESJAX_DISTRIBUTED=1.',
)
flags.DEFINE_string(
    'compilation_cache',
    os.environ.get('JAX_COMPILATION_CACHE_DIR', '~/.cache/resjax/xla'),
    "JAX's persistent compilation cache ('' = off): rerunning or resuming the same model "
    'and batch shape loads the compiled steps instead of compiling them again.',
)
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (auto on TPU VMs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (auto on TPU VMs).')
flags.DEFINE_integer('process_id', None, "This process's index (auto on TPU VMs).")
flags.mark_flags_as_required(['config', 'workdir'])


def _config_keys_help() -> str:
    """Every config key with its default (`config_lib.default_config()`, which the files in
    configs/ edit), for `--help`; what each means is in docs/config.md (models, training),
    docs/probes.md and docs/parallel.md."""

    def keys(c, prefix=''):
        for k, v in c.items():
            if hasattr(v, 'items'):
                yield from keys(v, f'{prefix}{k}.')
            else:
                yield f'  {prefix}{k} (default {v!r})'

    head = 'Config keys, set by --config.<key>=<value> (meanings: docs/config.md):'
    return '\n'.join(['', head, *keys(config_lib.default_config())])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but `--help` exits 0, and a bad flag, unknown config key or broken config
    file is one line and exit code 2."""
    if {'-h', '--help', '--helpshort', '-?'} & set(argv[1:]):
        print(__doc__)
        print(FLAGS.module_help(sys.argv[0]))
        print(_config_keys_help())
        sys.exit(0)
    try:
        return FLAGS(argv)
    except SyntaxError as e:
        print(f'error: config file {e.filename} line {e.lineno}: {e.msg}', file=sys.stderr)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        message = logs.flag_error_line(e, argv)
        print(
            f'error: bad flag or config override: {message} (config keys: --help)',
            file=sys.stderr,
        )
    except Exception as e:  # noqa: BLE001  (anything a config file's get_config raises)
        print(f'error: cannot load --config: {type(e).__name__}: {e}', file=sys.stderr)
    sys.exit(2)


def main(argv):
    logs.quiet_logs()
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if FLAGS.compilation_cache:
        jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    if FLAGS.distributed:  # Before any JAX computation.
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        if jax.process_index() != 0:
            logging.set_verbosity(logging.WARNING)  # Process 0 logs progress for everyone.
    try:
        config = FLAGS.config
        config.seed  # noqa: B018  (forces the lazy load, so a missing file fails here)
    except OSError as e:  # config_flags loads the file lazily
        print(
            f'error: cannot load --config: {str(e).strip().splitlines()[-1].strip()}',
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        config_lib.check_loaded(config, config_flags.get_config_filename(FLAGS['config']))
    except ValueError as e:
        _exit(f'error: {e}', 2)
    try:
        train.train_and_evaluate(config, FLAGS.workdir)
    except train.ConfigError as e:
        _exit(f'error: {e}', 2)
    except train.NonFiniteError as e:
        _exit(f'stopped: {e}', 3)
    logging.info('Done: %s', FLAGS.workdir)


def _exit(message: str, code: int) -> None:
    """Prints `message` and ends the process now. After a failed save, orbax's signalling
    threads (not daemons) wait for signals that will never come, and the interpreter would wait
    for them at exit (docs/notes.md, orbax); what is saved is whole, so nothing is lost."""
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.flush()
    os._exit(code)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
