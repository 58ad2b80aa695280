"""Config: one way to read, write and check config dataclasses."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import pytest

from jaxvlm.config_base import Config, check_choice, check_int
from jaxvlm.errors import InputError


@dataclasses.dataclass(frozen=True)
class Inner(Config):
    name: ClassVar[str] = "inner config"

    size: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_int("inner size", self.size, 1)


@dataclasses.dataclass(frozen=True)
class Outer(Config):
    name: ClassVar[str] = "outer config"

    kind: str
    inner: Inner = Inner(2)
    maybe: Inner | None = None
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[Inner, Inner] | None = None
    options: Mapping = dataclasses.field(default_factory=dict)
    derived: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("a", "b"))
        object.__setattr__(self, "derived", len(self.sizes))


@dataclasses.dataclass(frozen=True)
class Named(Config):
    """A config with a field called ``name``, which shadows the class's label."""

    name: str = "x"


def test_unknown_keys_are_named_in_order():
    with pytest.raises(InputError, match=r"^outer config: unknown keys: bogus, extra$"):
        Outer.from_dict({"kind": "a", "extra": 1, "bogus": 2})


def test_missing_keys():
    with pytest.raises(InputError, match=r"^inner config: missing keys: size$"):
        Inner.from_dict({"scale": 2.0})
    with pytest.raises(InputError, match=r"^outer config: missing keys: kind$"):
        Outer.from_dict({})


def test_a_field_that_is_not_an_init_field_is_unknown():
    with pytest.raises(InputError, match="unknown keys: derived"):
        Outer.from_dict({"kind": "a", "derived": 3})


def test_nested_configs_are_read_from_their_own_mappings():
    cfg = Outer.from_dict({"kind": "b", "inner": {"size": 3}, "maybe": {"size": 4, "scale": 0.5}})
    assert cfg.inner == Inner(3) and cfg.maybe == Inner(4, 0.5)
    assert Outer.from_dict({"kind": "b", "maybe": None}).maybe is None
    assert Outer.from_dict({"kind": "b", "inner": Inner(5)}).inner == Inner(5)  # already a config
    with pytest.raises(InputError, match=r"^outer config\.inner: unknown keys: colour$"):
        Outer.from_dict({"kind": "a", "inner": {"size": 3, "colour": "red"}})
    with pytest.raises(InputError, match=r"^outer config\.maybe: missing keys: size$"):
        Outer.from_dict({"kind": "a", "maybe": {}})
    with pytest.raises(InputError, match="inner size must be an integer >= 1, got 0"):
        Outer.from_dict({"kind": "a", "inner": {"size": 0}})


def test_lists_become_tuples():
    cfg = Outer.from_dict({"kind": "a", "sizes": [3, 4, 5], "pair": [{"size": 1}, {"size": 2}]})
    assert cfg.sizes == (3, 4, 5) and isinstance(cfg.sizes, tuple)
    assert cfg.pair == (Inner(1), Inner(2))
    assert cfg.derived == 3


def test_round_trip_through_json():
    cfg = Outer("a", Inner(3, 0.5), Inner(7), (8, 9), (Inner(1), Inner(2)), {"k": [1, 2]})
    d = cfg.to_dict()
    assert d == {
        "kind": "a",
        "inner": {"size": 3, "scale": 0.5},
        "maybe": {"size": 7, "scale": 1.0},
        "sizes": [8, 9],
        "pair": [{"size": 1, "scale": 1.0}, {"size": 2, "scale": 1.0}],
        "options": {"k": [1, 2]},
    }
    assert Outer.from_dict(json.loads(json.dumps(d))) == cfg
    assert Outer.from_dict(Outer("b").to_dict()) == Outer("b")


def test_where_names_the_config_in_errors():
    with pytest.raises(InputError, match=r"^model\.inner: unknown keys: x$"):
        Inner.from_dict({"size": 1, "x": 0}, "model.inner")
    with pytest.raises(InputError, match="outer config must be a mapping, got list"):
        Outer.from_dict([("kind", "a")])
    with pytest.raises(InputError, match="outer config.inner must be a mapping, got int"):
        Outer.from_dict({"kind": "a", "inner": 3})
    with pytest.raises(InputError, match=r"outer config.pair\[1\] must be a mapping, got str"):
        Outer.from_dict({"kind": "a", "pair": [{"size": 1}, "big"]})


def test_a_field_called_name_does_not_hide_the_config():
    with pytest.raises(InputError, match=r"^Named: unknown keys: y$"):
        Named.from_dict({"y": 1})
    assert Named.from_dict({"name": "z"}) == Named("z")


def test_replace_checks_again():
    cfg = Inner(2)
    assert cfg.replace(scale=3.0) == Inner(2, 3.0)
    with pytest.raises(InputError, match="inner size"):
        cfg.replace(size=-1)


def test_check_int():
    check_int("n", 3, 1, 3)
    check_int("n", np.int64(3), 1)  # numpy integers count
    for bad in (True, 2.0, "2", None, 0, 4):
        with pytest.raises(InputError, match="n must be an integer"):
            check_int("n", bad, 1, 3)
    with pytest.raises(InputError, match=r"n must be an integer \[1, 3\], got 4"):
        check_int("n", 4, 1, 3)
    with pytest.raises(InputError, match="n must be an integer >= 1, got 0"):
        check_int("n", 0, 1)


def test_check_choice():
    check_choice("kind", "a", ("a", "b"))
    with pytest.raises(InputError, match="kind is 'c'; expected one of a, b"):
        check_choice("kind", "c", ("a", "b"))
