"""The one exception type for user mistakes.

The CLI prints a `FrepoError` as one line on stderr and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class FrepoError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class Interrupted(FrepoError):
    """The run was stopped by Ctrl-C or SIGTERM after a checkpoint was written."""
