"""Log helpers shared by the training loop, the study and the scripts."""

from __future__ import annotations

import logging as std_logging

from absl import logging


def format_seconds(seconds: float) -> str:
    """A duration for progress lines: '4m05s', or '2h07m' from an hour up."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def quiet_orbax(min_level: int = std_logging.WARNING) -> None:
    """Drops orbax's log records below `min_level` from absl's handler.

    orbax logs every save at INFO, and its read-only manager warns on every load (inspection
    passes `logging.ERROR`); everything else is logged as before.
    """
    logging.get_absl_handler().addFilter(
        lambda r: 'orbax' not in r.pathname or r.levelno >= min_level
    )
