"""Logging: the library logs through `logging` under the "frepo" logger and is quiet by default (a
NullHandler, and long work shows a progress bar only when asked); the command line turns messages on.

Messages go to stderr through tqdm, so they never tear a progress bar. On a terminal a bar redraws in place;
in a redirected stderr (a batch job's log file) it would leave carriage returns, cursor codes and half lines,
so there only the outermost bar shows, as a plain line at most every `LOG_INTERVAL_S` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from .errors import FrepoWarning

LOGGER = "frepo"
logging.getLogger(LOGGER).addHandler(logging.NullHandler())
_shown = 0  # how many show_messages blocks are open
LOG_INTERVAL_S = 30.0  # a redirected stderr gets a progress line at most this often
_line_bars: weakref.WeakSet = weakref.WeakSet()  # the bars shown as lines; closed ones are disabled


def messages_shown() -> bool:
    """Whether the command line shows messages now: phases that have no `progress` flag of their own (a
    preprocessing fit, say) show a progress bar exactly then."""
    return _shown > 0


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            if _redraws_in_place():
                tqdm.write(self.format(record), file=sys.stderr)  # sys.stderr read now: tests capture it
            else:  # the bars' lines end theirs: nothing to clear, and tqdm.write's redraw after it was a line more
                sys.stderr.write(self.format(record) + "\n")
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


def _redraws_in_place() -> bool:
    """Whether a bar can redraw itself: on a terminal, or as a notebook's widget (tqdm.auto's choice in a
    Jupyter kernel, whose stderr is no terminal)."""
    from tqdm import autonotebook, std

    return autonotebook.tqdm is not std.tqdm or bool(getattr(sys.stderr, "isatty", lambda: False)())


class _Lines:
    """The file of a bar shown as lines: tqdm's carriage-return redraws each become a line of their own,
    blanks (its clearing) and repeats of the same progress (its redraw after a message or a postfix, its last
    line as it closes) dropped. stderr is read at each write, as the log handler reads it."""

    def __init__(self) -> None:
        self.last = ""

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            line = line.strip()
            progress = line.split(" [")[0]  # "desc: 50%|#####     | 2/4": what a line says beyond the clock
            if line and progress != self.last:
                sys.stderr.write(line + "\n")
                self.last = progress
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable: Iterable | None = None, **options: Any) -> tqdm:
    """`tqdm(iterable, **options)` on a terminal or in a notebook. In a redirected stderr: the outermost open
    bar as a line at most every LOG_INTERVAL_S seconds and once as it closes, and bars opened inside it not at
    all (close a bar on an exception too, `with progress_bar(...) as bar:`, or the bars after it stay quiet)."""
    if options.get("disable") or _redraws_in_place():
        return tqdm(iterable, **options)
    if any(not bar.disable for bar in _line_bars):  # inside another: its lines would interleave
        return tqdm(iterable, **{**options, "disable": True})
    # maxinterval too: tqdm's monitor thread redraws a bar left 10 s without one, with stale numbers. leave: a
    # bar that clears itself on a terminal (leave=False) still ends with its last line, or a log shows it at 0 %.
    options.update(
        file=_Lines(),
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        dynamic_ncols=False,
        ascii=True,
        leave=True,
    )
    bar = tqdm(iterable, **options)
    _line_bars.add(bar)
    return bar


# frepo's own source folder, as imported (a code object's file name keeps a symlinked path, such as macOS's
# /var, a linked venv or home) and resolved
_PACKAGE = tuple(
    {os.path.dirname(os.path.dirname(p)) + os.sep for p in (os.path.abspath(__file__), os.path.realpath(__file__))}
)


def warn(message: str, category: type[Warning] = FrepoWarning) -> None:
    """`warnings.warn` attributed to the first caller outside frepo: a script's line, not the frepo line that
    noticed (a fixed `stacklevel` pointed into frepo whenever the call came by another path). The command
    line prints the message alone."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
