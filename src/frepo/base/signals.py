"""Stopping long work cleanly: the first Ctrl-C or SIGTERM asks for a stop at the next safe point."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)
_aborting = threading.Event()  # a second Ctrl-C raised KeyboardInterrupt into whatever was running


def aborting() -> bool:
    """Whether a second Ctrl-C is aborting the work: a writer it interrupted may report it as its own error
    (torch.save's "unexpected pos"), which is not a disk failure."""
    return _aborting.is_set()


class StopRequest(threading.Event):
    """Set by the first Ctrl-C / SIGTERM: the loop stops at its next safe point. Within `interruptible()`
    (work the loop can redo after a resume, such as a validation: minutes, where a scheduler's SIGKILL follows
    its SIGTERM within 30 s) the request interrupts at once, as a KeyboardInterrupt."""

    def __init__(self):
        super().__init__()
        self.now = False  # inside `interruptible()`

    @contextlib.contextmanager
    def interruptible(self):
        self.now = True  # first: a request that comes between the two is not taken as "after the step"
        try:
            if self.is_set():  # asked during the step before it: the work is not begun
                raise KeyboardInterrupt
            yield
        finally:
            self.now = False


@contextlib.contextmanager
def stop_on_signal():
    """The first Ctrl-C / SIGTERM asks the loop to stop after the current step (at once inside
    `StopRequest.interruptible`); a second Ctrl-C aborts. Yields the `StopRequest` the loop polls (never set
    off the main thread, where no handler can be installed)."""
    flag = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:
            _aborting.set()
            raise KeyboardInterrupt
        flag.set()
        if flag.now:
            log.warning("frepo: stopping now and writing a checkpoint; the same command redoes what this cut short")
            raise KeyboardInterrupt
        log.warning("frepo: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _aborting.clear()
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _aborting.clear()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM (what a scheduler or `kill` sends) interrupts as Ctrl-C does: work that keeps
    what it finished on Ctrl-C (an evaluation's finished networks, privacy's victims, a run's end after its
    last step) keeps it then too, where SIGTERM's default ended the process at once and silently. A loop's own
    `stop_on_signal` takes precedence inside it. Main thread only, and not under torchrun, whose agent stops
    the other workers with SIGTERM when one fails: one blocked in a collective could not run a Python handler
    and would wait 30 s for the agent's SIGKILL instead of ending at once."""
    from .dist import world_size

    if threading.current_thread() is not threading.main_thread() or world_size() > 1:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
