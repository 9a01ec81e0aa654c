"""Any TOML document given as a scenario yields a valid config or a clear `ScenarioError`,
never another exception (a traceback is the testbed failing, not the user)."""

from __future__ import annotations

import contextlib
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_testbed.common import config
from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.common.scenario_file import load_scenario, scenario_from_dict

FIELDS = sorted({f.name for cls in vars(config).values()
                 if isinstance(cls, type) and dataclasses.is_dataclass(cls)
                 for f in dataclasses.fields(cls)} | {"tiers", "low", "mid", "high", "edge"})
"""Every field name of the config, so the fuzzer reaches deep into the tables."""

keys = st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=12))
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["", "..", "../../../x", "/dev/zero", "poisson", "trace", "low",
                     "light-low", "heavy-cnn", "kill_device", "multitasc", "1:1:1", "a/b"]),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=20)
documents = st.dictionaries(keys, values, max_size=8)


def _field_values(hint: Any) -> st.SearchStrategy[Any]:
    """Values of the right shape for a config field, most of the time; anything otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_field_values(a) for a in args if a is not type(None)))
    if origin is typing.Literal:
        right: st.SearchStrategy[Any] = st.sampled_from(args)
    elif origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            right = st.lists(_field_values(args[0]), max_size=4)
        else:
            right = st.tuples(*(_field_values(a) for a in args)).map(list)
    elif origin is dict:
        right = st.dictionaries(st.sampled_from(["low", "mid", "high", "edge", "a/b"]),
                                st.deferred(lambda: _table(config.TierSpec)), max_size=3)
    elif dataclasses.is_dataclass(hint):
        right = st.deferred(lambda: _table(hint))
    elif hint is float:
        right = st.floats(allow_nan=True, allow_infinity=True)
    elif hint is int:
        right = st.integers(min_value=-(2**63), max_value=2**63 - 1)
    elif hint is bool:
        right = st.booleans()
    else:
        right = scalars
    return st.one_of(right, right, right, scalars)


def _table(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """A table of `cls`'s fields: a random subset, each usually of the right shape."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: _field_values(hints[f.name]) for f in dataclasses.fields(cls)
              if f.name not in ("tiers", "sweep", "params")}
    if cls is config.ScenarioConfig:
        fields["tiers"] = st.dictionaries(
            st.sampled_from(["low", "mid", "high", "doorbell", "../x"]),
            st.deferred(lambda: _table(config.TierSpec)), max_size=3)
    return st.fixed_dictionaries({}, optional=fields)


structured = st.deferred(lambda: _table(config.ScenarioConfig))


def _tomlable(doc: dict[str, Any]) -> bool:
    try:
        tomllib.loads(tomli_w.dumps(doc))
    except Exception:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_table_is_a_config_or_a_scenario_error(doc: dict[str, Any]) -> None:
    try:
        cfg = scenario_from_dict(doc)
    except ScenarioError:
        return
    assert isinstance(cfg, ScenarioConfig)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured)
def test_any_table_shaped_like_a_scenario_is_a_config_or_a_scenario_error(
        doc: dict[str, Any]) -> None:
    try:
        cfg = scenario_from_dict(doc)
    except ScenarioError:
        return
    assert isinstance(cfg, ScenarioConfig)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(documents.filter(_tomlable))
def test_any_toml_file_is_a_config_or_a_scenario_error(tmp_path: Path,
                                                       doc: dict[str, Any]) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(tomli_w.dumps(doc))
    try:
        cfg = load_scenario(path)
    except ScenarioError as exc:
        assert str(exc) and len(str(exc)) < 2000
        return
    assert isinstance(cfg, ScenarioConfig)


@given(st.binary(max_size=200))
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bytes_that_are_not_toml_are_a_scenario_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "scenario.toml"
    path.write_bytes(data)
    with contextlib.suppress(ScenarioError):
        load_scenario(path)
