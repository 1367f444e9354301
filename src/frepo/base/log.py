"""Logging: the library logs through `logging` under the "frepo" logger and is quiet by default (a
NullHandler, and long work shows a progress bar only when asked); the command line turns messages on.

Messages go to stderr through tqdm, so they never tear a progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

LOGGER = "frepo"
logging.getLogger(LOGGER).addHandler(logging.NullHandler())
_shown = 0  # how many show_messages blocks are open


def messages_shown() -> bool:
    """Whether the command line shows messages now: phases that have no `progress` flag of their own (a
    preprocessing fit, say) show a progress bar exactly then."""
    return _shown > 0


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)  # sys.stderr read now: tests capture it
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


@contextlib.contextmanager
def show_messages(level: int = logging.INFO) -> Iterator[None]:
    """Within the block, print frepo's log messages on stderr from `level` up (the command line's run);
    afterwards the library is quiet again."""
    logger = logging.getLogger(LOGGER)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    global _shown
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    _shown += 1
    try:
        yield
    finally:
        _shown -= 1
        logger.removeHandler(handler)
        logger.setLevel(previous)
