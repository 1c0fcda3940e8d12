"""The plain-vs-residual study in one command: trains (or resumes) a grid of runs and writes
`<workdir>/report.md` and `report.html` with figures and findings computed from the runs.

  python scripts/study.py --config configs/study_digits.py --workdir runs/study
  python scripts/study.py --config configs/study_digits.py --workdir runs/study --report_only

Re-running skips finished runs and resumes partial ones. `--report_only` trains and inspects
nothing: it renders whatever exists and lists what is missing. Exit codes: 0 done; 2 bad
config, flag or workdir (one line, before anything compiles).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resjax import logs, study_config  # noqa: F401  (light; `resjax.study` is imported in main)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Study config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Study directory: runs/, figures/, report.md, report.html.')
flags.DEFINE_bool('report_only', False, 'Render the report from what exists; train nothing.')
flags.DEFINE_bool('retry_diverged', False, 'Train again the runs that stopped on a NaN.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or unknown config key is one line and exit code 2."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f'error: bad flag or config override: {message}', file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
        sys.exit(2)
    from resjax import study  # JAX and matplotlib: after the flags (a bad flag fails fast).

    logs.quiet_logs()
    try:
        config = FLAGS.config
        config.seed  # noqa: B018  (config_flags loads lazily: a missing file fails here)
    except (OSError, ValueError) as e:
        print(f'error: cannot load --config: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
        sys.exit(2)
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
    for line in result['missing']:
        logging.warning('missing: %s', line)
    print(f'wrote {FLAGS.workdir}/report.md and report.html')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
