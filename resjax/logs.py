"""Log helpers shared by the training loop, the study and the scripts."""

from __future__ import annotations

import logging as std_logging
import sys

from absl import flags, logging


def format_seconds(seconds: float) -> str:
    """A duration for progress lines: '4m05s', or '2h07m' from an hour up."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def flag_error_line(e: BaseException, argv: list[str]) -> str:
    """A flag or config override error as one line (the scripts' exit-2 message).
    ml_collections raises an unknown key as an AttributeError from a KeyError whose str is the
    repr of a two-line message ("'stpes'", 'Did you mean "steps" ...'): that message is the
    readable one, with the override named."""
    key_errors = [x for x in (e, e.__cause__, e.__context__) if isinstance(x, KeyError)]
    if key_errors and key_errors[0].args:
        key, *hint = [x.strip() for x in str(key_errors[0].args[0]).splitlines() if x.strip()]
        where = [a.split('=')[0] for a in argv if a.startswith('--config.') and key.strip("'") in a]
        named = f'{key} is not a config key' + (f' ({where[0]})' if where else '')
        return '. '.join([named, *hint])
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return message.removeprefix('ValueError: ')


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser of the global FLAGS (`app.run(main, flags_parser=parse_flags)`), but a bad
    flag or config override (`--config.key=value`) is one line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f'error: bad flag or config override: {flag_error_line(e, argv)}', file=sys.stderr)
        sys.exit(2)


def quiet_logs(orbax_min_level: int = std_logging.WARNING) -> None:
    """Drops two kinds of noise from absl's handler; everything else is logged as before.

    - orbax's records below `orbax_min_level` (a standard `logging` level; absl's constants
      are -3..1): it logs every save at INFO, and its read-only manager warns on every load
      (inspection passes `logging.ERROR`); and orbax's records that carry a traceback (a
      failed save's, which resjax reports in one line).
    - JAX's INFO line `Unable to initialize backend 'tpu': ... libtpu.so` while it picks a
      backend on a machine without a TPU: expected, but it reads as an error.
    - After a failed restore (a damaged checkpoint, reported in one line), TensorStore reads
      that orbax started complete on a loop orbax has closed, and Python prints each one's
      `RuntimeError: Event loop is closed` as an unraisable exception (docs/notes.md, orbax).
      Those, and only those, are dropped.
    """
    if orbax_min_level < std_logging.DEBUG:
        raise ValueError(f'orbax_min_level={orbax_min_level} is absl, not a standard logging level')
    previous_hook = sys.unraisablehook

    def unraisable(u: sys.UnraisableHookArgs) -> None:
        late_read = isinstance(u.exc_value, RuntimeError) and 'Event loop is closed' in str(
            u.exc_value
        )
        if not late_read:
            previous_hook(u)

    sys.unraisablehook = unraisable

    def keep(record: std_logging.LogRecord) -> bool:
        if 'orbax' in record.pathname:
            # A failed save is logged with its traceback by each orbax thread it stopped;
            # resjax reports it once, in one line (checkpoint.check_saved).
            return record.levelno >= orbax_min_level and not record.exc_info
        return not (
            'xla_bridge' in record.pathname
            and record.levelno < std_logging.WARNING
            and 'Unable to initialize backend' in str(record.msg)
        )

    logging.get_absl_handler().addFilter(keep)
