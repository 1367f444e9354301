"""Dispatch by name: one decorator factory for frepo's registries (networks, other tools' file
readers, export layouts), in the style of timm's `register_model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable)


def registering(table: dict[str, Any], name: str, what: str, entry: Callable[[F], Any] | None = None):
    """Decorator: put `entry(f)` (default: `f` itself) into `table` under `name` and return `f` unchanged.
    A second registration of a name is an error, so two modules cannot silently shadow each other's
    `what` (the word the error uses: "architecture", "format", ...)."""

    def register(f: F) -> F:
        if name in table:
            raise ValueError(f"{what} {name!r} is registered twice")
        table[name] = entry(f) if entry else f
        return f

    return register
