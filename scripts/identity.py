"""Can a block learn the identity? `python scripts/identity.py --config configs/identity.py
--workdir W [--config.identity.source=RUN]` (resjax/identity.py says what it fits and how).

Writes W/identity.json (every number, the predictions and the rule) and W/identity.png, and
prints the rule and its verdict. Exit code 2 for a bad flag, config or source (one line).
"""

import logging as std_logging
import sys

from absl import app, flags
from ml_collections import config_flags

from resjax import logs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Required. configs/identity.py[:smoke].')
flags.DEFINE_string('workdir', None, 'Required. Directory for identity.json and identity.png.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
        sys.exit(2)
    from resjax import identity, runs  # JAX and matplotlib: after the flags.

    logs.quiet_logs(std_logging.ERROR)  # orbax's read-only manager warns on every load.

    try:
        config = FLAGS.config
        identity.validate_config(config)
        result = identity.run_experiment(config, FLAGS.workdir)
    except (OSError, ValueError, runs.RunError) as e:
        print(f'error: {str(e).strip().splitlines()[-1]}', file=sys.stderr)
        sys.exit(2)
    for key, value in result['summary'].items():
        print(f'{key}: {value}')
    print(f'rule: {result["rule"]}')
    if 'finding' in result:
        f = result['finding']
        print(f'verdict: {f["verdict"]} (plain minus residual, log10 error: {f.get("decades")})')
    print(f'wrote {FLAGS.workdir}/identity.json and identity.png')


if __name__ == '__main__':
    app.run(main, flags_parser=logs.parse_flags)
