"""Typed settings as dataclasses: one definition of every option's name, type, default, help and
allowed values, from which the command line builds its flags (`frepo.cli`) and runs save their JSON.

A leaf field carries its help text (and, for an enumerated option, its `choices`) in the field
metadata; nested dataclasses group options by concern. Leaf names are unique within one settings
tree, so each is one flag (`--batch-size`) and one keyword (`batch_size=...`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from typing import Any, TypeAlias

import numpy as np

from .errors import FrepoError

# The largest count a setting may ask for (networks, steps, epochs): beyond, a list of 10^20 streams or tqdm's
# OverflowError, where one line is due.
COUNT_MAX = 2**31 - 1

# The type of a `listed` option in the Python API: "0,1,2", [0, 1, 2], range(3) or one number (a numpy array is
# taken too). `check_fields` turns it into the comma-separated string the command line takes and runs save.
CommaList: TypeAlias = str | int | Sequence[int | str]


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, listed: bool = False) -> Any:  # noqa: A002
    """A dataclass field with its CLI help text and, for an enumerated option, its allowed values. A `listed`
    option is a comma-separated string (`--orders 0,1,2`) that the Python API also takes as a list or a number
    (`orders=[0, 1, 2]`, `victim_steps=300`)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if listed:
        metadata["listed"] = True
    return field(default=default, metadata=metadata)


def nested(cls: type) -> Any:
    """A field holding a nested settings dataclass, default-constructed."""
    return field(default_factory=cls)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """One message for every enumerated option, on the command line and in the Python API alike."""
    if value not in choices:
        raise FrepoError(f"unknown {name} {value!r}: {name} must be one of {', '.join(choices)}")


def check_finite(name: str, value: float, low: float | None = None, positive: bool = False) -> None:
    """Floats must be finite numbers (NaN passes every comparison) and, with `low`, at least `low`; `positive`
    ones above 0 (a learning rate: one message for NaN and for 0)."""
    wrong = not isinstance(value, (int, float)) or not math.isfinite(value)
    if wrong or (low is not None and value < low) or (positive and value <= 0):
        bound = " > 0" if positive else f" >= {low}" if low is not None else ""
        raise FrepoError(f"{name} must be a finite number{bound}, got {value!r}")


def check_fields(settings: Any) -> None:
    """Every field of `settings` (not of the dataclasses nested in it) holds a value of its declared type
    (`check_type`, whose plain value, such as a path's str, replaces it in place), and every enumerated one
    one of its choices."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("listed"):
            value = comma_list(value)
            if not isinstance(value, str) and value is not None:
                raise FrepoError(f"{f.name} must be a comma-separated string or a list of its items, got {value!r}")
        declared = hints[f.name]
        if isinstance(declared, type) and dataclasses.is_dataclass(declared):  # DistillConfig.data: a DataConfig
            if not isinstance(value, declared):
                raise FrepoError(f"{f.name} must be a {declared.__name__}, got {value!r}")
        elif not dataclasses.is_dataclass(value):
            try:
                setattr(settings, f.name, check_type(f.name, value, hints[f.name]))
            except FrepoError:
                choices = f.metadata.get("choices")
                if choices is None:
                    raise
                # together=True: "must be a string" named no choice (auto, on, off, streams); a value of
                # another type is none of them (nor compared with them: a numpy array's `in` raises)
                raise FrepoError(
                    f"unknown {f.name} {value!r:.60}: {f.name} must be one of {', '.join(choices)}"
                ) from None
        choices = f.metadata.get("choices")
        if choices is not None:
            check_choice(f.name, getattr(settings, f.name), choices)


def comma_list(value: Any) -> Any:
    """A listed option's value as its comma-separated string: a number or a list/tuple of numbers and strings
    joined; anything else (a string, None, a wrong type for check_type to name) as it is."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (range, np.ndarray)) and np.ndim(value) == 1:
        value = list(value)  # range(5), a 1-D array of class ids
    items_ok = (str, numbers.Integral)
    if isinstance(value, (list, tuple)) and all(isinstance(v, items_ok) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) if isinstance(v, str) else str(int(v)) for v in value)
    return value


def comma_items(value: CommaList) -> list[str]:
    """The items of a listed option's value, stripped, empty ones left out: "0, 1," and [0, 1] alike give
    ["0", "1"]."""
    return [item.strip() for item in str(comma_list(value)).split(",") if item.strip()]


# The plain types a setting may declare, alone or with None; the values each accepts as it
SETTING_TYPES: dict[type, tuple[type, ...]] = {
    bool: (bool, np.bool_),
    int: (numbers.Integral,),
    float: (numbers.Real,),
    str: (str, os.PathLike),
}


def check_type(name: str, value: Any, declared: Any) -> Any:
    """`value` as a setting of type `declared` (bool, int, float, str, or one of them or None): a numpy
    number as the Python number, a path or a torch.device as its str (settings are saved as JSON).
    Anything else is an error naming the setting, so the text "False" is not a true flag, 2.5 no step
    count, "5" no batch size (each failed deep inside a run, or passed silently). A setting of another
    declared type (arch: a str or a list) is left as it is."""
    optional = typing.get_origin(declared) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        declared
    )
    kinds = [t for t in typing.get_args(declared) if t is not type(None)] if optional else [declared]
    if len(kinds) != 1 or kinds[0] not in SETTING_TYPES:
        return value
    kind = kinds[0]
    if value is None and optional:
        return value
    if kind is str and isinstance(value, (str, os.PathLike)):  # SETTING_TYPES[str]
        return os.fspath(value)  # a path as its str
    if isinstance(value, SETTING_TYPES[kind]) and (kind is bool or not isinstance(value, (bool, np.bool_))):
        return kind(value)
    if kind is str and type(value).__module__ == "torch" and type(value).__name__ == "device":
        return str(value)  # device=torch.device("cuda:1")
    expected = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}[kind]
    raise FrepoError(f"{name} must be {expected}{' or None' if optional else ''}, got {value!r}")


def to_dict(settings: Any) -> dict:
    """Plain-JSON view of a (nested) settings dataclass."""
    return dataclasses.asdict(settings)


def from_dict(cls: type, values: dict) -> Any:
    """Inverse of `to_dict`; an unknown key is an error (settings from another frepo version)."""
    obj = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise FrepoError(f"unknown config key {key!r} for {cls.__name__}")
        current = getattr(obj, key)
        setattr(obj, key, from_dict(type(current), value) if dataclasses.is_dataclass(current) else value)
    return obj


def leaf_fields(settings: Any) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf field name -> (the dataclass instance that owns it, its field). Names are unique."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_fields(value))
        else:
            assert f.name not in out, f"duplicate settings field name {f.name}"
            out[f.name] = (settings, f)
    return out


def set_leaf(settings: Any, name: str, value: Any) -> None:
    """Set leaf `name` wherever it lives in the tree; an unknown name is a user error."""
    fields = leaf_fields(settings)
    if name not in fields:
        raise FrepoError(f"unknown option {name!r} for {type(settings).__name__}; known: {', '.join(sorted(fields))}")
    owner, f = fields[name]
    setattr(owner, f.name, value)
