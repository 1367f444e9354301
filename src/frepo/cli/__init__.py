"""The `frepo` command: thin subcommands over the library (`frepo.cli.commands`), declared one function
per subcommand (`frepo.cli.parser`), with flags generated from the typed settings (`frepo.cli.flags`). A
user mistake prints one line on stderr and exits 2; Ctrl-C during a run exits 130 after a checkpoint."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

from ..base.errors import FrepoError, Interrupted, SaidElsewhere, out_of_memory


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"frepo: warning: {message}", file=sys.stderr)


def _silent(message, category, filename, lineno, file=None, line=None):
    pass


def main(argv: list[str] | None = None) -> int:
    try:  # the library loads here (torch: seconds), where Ctrl-C is one line, not a traceback
        from ..base.log import show_messages
        from ..base.perf import tune_cpu_allocator
        from ..base.signals import terminate_as_interrupt
        from .commands import HANDLERS
        from .parser import build_parser

        parser = build_parser()
    except KeyboardInterrupt:
        print("frepo: interrupted", file=sys.stderr)
        return 130
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already reported in one line
        return int(exc.code or 0)
    # Under torchrun every process runs this: rank 0 alone speaks (each message, warning, summary and stop
    # was printed once per process); another rank says only its own errors, naming itself.
    rank = _rank()
    warnings.showwarning = _show_warning if rank == 0 else _silent
    tune_cpu_allocator()  # speed only: freed memory stays in the heap (see frepo.base.perf)
    try:
        quiet = contextlib.redirect_stdout(io.StringIO()) if rank else contextlib.nullcontext()
        with show_messages(logging.ERROR if rank else logging.INFO), terminate_as_interrupt(), quiet:
            return HANDLERS[args.command](args)
    except Interrupted as exc:
        if rank == 0:
            print(f"frepo: {exc}", file=sys.stderr)
        return 130
    except FrepoError as exc:
        if not isinstance(exc, SaidElsewhere):
            print(f"frepo{f' (rank {rank})' if rank else ''}: error: {exc}", file=sys.stderr)
        elif rank and os.environ.get("LOCAL_RANK", "0") == "0":  # said once, maybe on another node: pointed to
            refused = str(exc).split(":")[0]  # "rank N refused"
            print(f"frepo (rank {rank}): stopped: {refused} and said why in its own output", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("frepo: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        said = out_of_memory(exc)
        if said is None:
            raise
        print(f"frepo{f' (rank {rank})' if rank else ''}: error: {said}", file=sys.stderr)
        return 2


def _rank() -> int:
    """This process's rank under torchrun (WORLD_SIZE > 1), else 0; a malformed variable counts as none (the
    distillation's own start says what is wrong with it)."""
    from ..base.dist import world_size

    try:
        return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0
    except ValueError:
        return 0


def __getattr__(name: str):
    if name == "build_parser":  # kept from when this module imported it eagerly
        from .parser import build_parser

        return build_parser
    raise AttributeError(f"module 'frepo.cli' has no attribute {name!r}")


__all__ = ["build_parser", "main"]
