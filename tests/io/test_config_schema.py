"""The generic config checker: unknown keys, wrong types, conversions, YAML scalars."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from instaseg.io.config_schema import ConfigError, parse_section, parse_yaml, section_to_dict


@dataclass
class Inner:
    size: tuple[int, int] | None = None
    rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"'rate' must be in [0, 1]; got {self.rate}")


@dataclass
class Outer:
    name: str
    count: int = 1
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    steps: tuple[int, ...] = ()
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, Any] = field(default_factory=dict)


def test_valid_mapping_converts_lists_and_ints():
    section = parse_section(Outer, {"name": "x", "steps": [1, 2], "inner": {"size": [3, 4], "rate": 1}}, "")
    assert section.steps == (1, 2)
    assert section.inner.size == (3, 4)
    assert section.inner.rate == 1.0 and isinstance(section.inner.rate, float)
    assert section_to_dict(section)["inner"] == {"size": [3, 4], "rate": 1.0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "cuont": 2}, "config key 'cuont' is unknown; expected one of count, extra, flag"),
        ({"name": "x", "inner": {"rat": 2}}, "config key 'inner.rat' is unknown; expected one of rate, size"),
        ({}, "config key 'name' is required"),
        ({"name": "x", "count": 2.5}, "config key 'count' must be an integer; got float 2.5"),
        ({"name": "x", "count": True}, "config key 'count' must be an integer; got bool True"),
        ({"name": "x", "flag": "yes please"}, "config key 'flag' must be true or false; got str"),
        ({"name": "x", "mode": "c"}, "config key 'mode' must be one of 'a', 'b'; got 'c'"),
        ({"name": "x", "steps": [1, "two"]}, "config key 'steps[1]' must be an integer; got str 'two'"),
        ({"name": "x", "steps": 3}, "config key 'steps' must be a list (list of int); got int 3"),
        ({"name": "x", "inner": {"size": [1]}}, "config key 'inner.size' must be a list of 2 values; got 1"),
        ({"name": "x", "inner": 5}, "config key 'inner' must be a mapping of its options; got int 5"),
        ({"name": "x", "inner": {"rate": 3}}, "config section 'inner': 'rate' must be in [0, 1]; got 3.0"),
        ({"name": 7}, "config key 'name' must be a string; got int 7"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        parse_section(Outer, data, "")
    assert message in str(info.value)


def test_prefix_appears_in_nested_messages():
    with pytest.raises(ConfigError, match=r"config key 'top\.inner\.rate' must be a number"):
        parse_section(Outer, {"name": "x", "inner": {"rate": "high"}}, "top")


def test_yaml_reads_exponent_floats_and_reports_syntax_errors():
    assert parse_yaml("a: 1e-4\nb: -2.5E3\nc: 10\nd: 1.5", "f.yaml") == {
        "a": 1e-4,
        "b": -2500.0,
        "c": 10,
        "d": 1.5,
    }
    assert parse_yaml("1e-4", "override") == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="f.yaml: not valid YAML"):
        parse_yaml("a: [1, 2", "f.yaml")
