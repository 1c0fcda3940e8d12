"""The plain-vs-residual study in one command: trains (or resumes) a grid of runs and writes
`<workdir>/report.md` and `report.html` with figures and findings computed from the runs.

  python scripts/study.py --config configs/study_digits.py --workdir runs/study
  python scripts/study.py --config configs/study_digits.py --workdir runs/study --report_only

Re-running skips finished runs and resumes partial ones. `--report_only` trains and inspects
nothing: it renders whatever exists and lists what is missing.

Several processes may share one study workdir (one per GPU or host): each trains the next run
no other holds, and the last to finish inspects and writes the report:

  CUDA_VISIBLE_DEVICES=0 python scripts/study.py --config ... --workdir runs/study &
  CUDA_VISIBLE_DEVICES=1 python scripts/study.py --config ... --workdir runs/study &

`--list` prints each run's own `train.py` command instead (one a line, constructed runs last:
each needs its source finished), for a job array or a pod launcher; then run the study once.

Exit codes: 0 done, or this process's share done (other processes hold runs or the report),
or stopped at a checkpoint by SIGTERM (rerun to resume); 2 bad config, flag or workdir (one
line, before anything compiles); 4 the report is written but the study is incomplete (runs
unfinished, figures not drawn, an inspection failed: report.md's Missing section; fix, rerun).
"""

import logging as std_logging
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resjax import config_lib, logs, study_config  # noqa: F401  (light; `resjax.study` is imported in main)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Study config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Study directory: runs/, figures/, report.md, report.html.')
flags.DEFINE_bool('report_only', False, 'Render the report from what exists; train nothing.')
flags.DEFINE_bool('retry_diverged', False, 'Train again the runs that stopped on a NaN.')
flags.DEFINE_bool('list', False, "Print each run's train.py command and state; train nothing.")
flags.DEFINE_string(
    'compilation_cache',
    os.environ.get('JAX_COMPILATION_CACHE_DIR', '~/.cache/resjax/xla'),
    "JAX's persistent compilation cache ('' = off), shared by the study's processes and runs.",
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
        sys.exit(2)
    from resjax import study  # JAX and matplotlib: after the flags (a bad flag fails fast).

    # orbax's read-only managers warn on every load during the inspection phase.
    logs.quiet_logs(std_logging.ERROR)
    try:
        config = FLAGS.config
        config.seed  # noqa: B018  (config_flags loads lazily: a missing file fails here)
        config_lib.check_loaded(config, config_flags.get_config_filename(FLAGS['config']))
    except (OSError, ValueError) as e:
        print(f'error: cannot load --config: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
        sys.exit(2)
    if FLAGS.list:
        list_runs(config)
        return
    if FLAGS.compilation_cache:
        import jax

        jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    try:
        result = study.run_study(
            config,
            FLAGS.workdir,
            report_only=FLAGS.report_only,
            retry_diverged=FLAGS.retry_diverged,
        )
    except study.StudyError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    if result['status'] == 'stopped':
        print('stopped at a checkpoint; rerun the same command to resume')
        return
    if result['status'] == 'elsewhere':
        print(f'this process is done; {result["holder"]} holds the rest and writes the report')
        return
    for line in result['missing']:
        logging.warning('missing: %s', line)
    print(f'wrote {FLAGS.workdir}/report.md and report.html')
    if result['status'] != 'complete':
        print(
            f'study incomplete ({len(result["missing"])} missing, first: '
            f'{result["missing"][0]}); see report.md, fix and rerun',
            file=sys.stderr,
        )
        sys.exit(4)


def list_runs(config) -> None:
    """Prints one `train.py` command a line, in training order, with each run's name, state
    and (constructed runs) source as a trailing shell comment."""
    from resjax import study

    try:
        specs = study.expand_grid(config, FLAGS.workdir)
    except study.StudyError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    config_file = config_flags.get_config_filename(FLAGS['config'])
    file_config = config_flags.config_flags.ConfigFileFlagParser('config').parse(config_file)
    script = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py'))
    for spec in specs:
        after = f', after {spec.source} finishes' if spec.source else ''
        argv = study.train_command(spec, config_file, file_config, script)
        print(f'{shlex.join(argv)}  # {spec.name}: {study.run_state(spec)}{after}')


if __name__ == '__main__':
    app.run(main, flags_parser=logs.parse_flags)
