"""Logging: the library logs through `logging` under the "frepo" logger and is quiet by default (a
NullHandler, and long work shows a progress bar only when asked); the command line turns messages on.

Messages go to stderr through tqdm, so they never tear a progress bar.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

LOGGER = "frepo"
logging.getLogger(LOGGER).addHandler(logging.NullHandler())


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)  # sys.stderr read now: tests capture it
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def show_messages(level: int = logging.INFO) -> None:
    """Print frepo's log messages on stderr from `level` up (the command line calls this once)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
