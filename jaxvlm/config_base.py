"""One way to read, write and check config dataclasses.

A config is a frozen dataclass deriving from `Config`: it checks its own values in
``__post_init__`` (raising `InputError`), `from_dict` reads it from a JSON-like mapping (unknown
and missing keys are one-line errors naming the config, nested config fields are read from their
own mappings, lists become tuples where a field is a tuple), and `to_dict` writes it back.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from jaxvlm.errors import InputError


class Config:
    """Mixin for frozen dataclasses; ``name`` is how errors call it ("tokenizer config")."""

    name: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None) -> Self:
        where = where or _label(cls)
        if not isinstance(d, Mapping):
            raise InputError(f"{where} must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - set(fields), key=str)
        if unknown:
            raise InputError(f"{where}: unknown keys: {', '.join(map(str, unknown))}")
        missing = [n for n, f in fields.items() if n not in d and _required(f)]
        if missing:
            raise InputError(f"{where}: missing keys: {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        values = {name: _read(hints[name], value, f"{where}.{name}") for name, value in d.items()}
        try:
            return cls(**values)
        except TypeError as e:
            raise InputError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        # init fields only: what `from_dict` reads back
        return {f.name: _write(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"{name} is {value!r}; expected one of {', '.join(map(str, choices))}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An integer (not a bool; numpy integers count) in [low, high]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
        or (high is not None and value > high)
    ):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(f"{name} must be an integer {span}, got {value!r}")


def _label(cls: type) -> str:
    """``cls.name``, or the class's own name where a field called ``name`` shadows the label (such a
    config's ``from_dict`` passes its label as ``where``: see `jaxvlm.eval.runner.EvalSpec`)."""
    label = cls.name
    if isinstance(label, str) and "name" not in {f.name for f in dataclasses.fields(cls)}:
        return label
    return cls.__name__


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _read(hint: Any, value: Any, where: str) -> Any:
    options = _options(hint)
    for option in options:
        if _is_config(option) and isinstance(value, Mapping):
            return option.from_dict(value, where)
        if (option is tuple or typing.get_origin(option) is tuple) and isinstance(value, (list, tuple)):
            return _read_tuple(typing.get_args(option), value, where)
    if (
        all(_is_config(o) or o is type(None) for o in options)
        and any(_is_config(o) for o in options)
        and not any(_is_config(o) and isinstance(value, o) for o in options)
        and not (value is None and type(None) in options)
    ):  # a config field holding neither a config nor its mapping (e.g. a number from JSON)
        raise InputError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Config)


def _read_tuple(args: tuple, value: list | tuple, where: str) -> tuple:
    """A list as a tuple, its items read by their own hints (``tuple[X, ...]`` or ``tuple[X, Y]``)."""
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    if len(args) != len(value):  # a bare ``tuple`` or a length mismatch, which __post_init__ reports
        return tuple(value)
    return tuple(_read(hint, item, f"{where}[{i}]") for i, (hint, item) in enumerate(zip(args, value)))


def _options(hint: Any) -> tuple:
    """The alternatives of a union (``X | None``), or the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _write(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_write(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _write(v) for k, v in value.items()}
    return value
