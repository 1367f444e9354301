"""argparse flags generated from typed settings (`frepo.base.fields`): one definition of every option's
name, type, default, help and allowed values, for `distill` and `evaluate` alike.

Generated flags default to "not given" (argparse.SUPPRESS), so only the flags a user types override a
preset or a config; `explicit` collects them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from ..base.fields import check_choice, leaf_fields


class Parser(argparse.ArgumentParser):
    """argparse with frepo's rule for user mistakes: one line on stderr, exit 2 (no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"frepo: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(owner: Any, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(type(owner))[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def choice(name: str, choices: tuple[str, ...]):
    """An argparse type that accepts one of `choices`, with the message the settings' own check gives."""

    def parse(value: str) -> str:
        try:
            check_choice(name, value, choices)
        except Exception as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def add_settings_flags(parser: argparse.ArgumentParser, settings: Any, skip: frozenset[str] = frozenset()) -> None:
    """A flag for every leaf field of `settings` (a settings dataclass instance) not in `skip`."""
    for name, (owner, f) in leaf_fields(settings).items():
        if name in skip:
            continue
        kind = str if f.metadata.get("listed") else _field_type(owner, f)  # a comma list: its string
        default = getattr(owner, f.name)
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        if "(default:" not in help_text:  # a help that says its default itself says it better than the value
            shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
            help_text += f" (default: {shown})"  # a switch is on or off, as --download's own help says
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif choices:
            parser.add_argument(
                flag(name),
                dest=name,
                type=choice(name, choices),
                choices=choices,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag(name),
                dest=name,
                type=kind,
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=kind.__name__.upper(),
            )


def explicit(args: argparse.Namespace, *settings: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The flags given on the command line that belong to `settings`, by leaf name."""
    names = set().union(*(leaf_fields(s) for s in settings)) - skip
    return {k: v for k, v in vars(args).items() if k in names}
