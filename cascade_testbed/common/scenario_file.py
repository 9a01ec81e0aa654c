"""Scenario files: the one TOML reader and writer. Rejects unknown keys and bad values with
`ScenarioError` naming the file and the field; a trace CSV a scenario names is read here, so
the configuration objects themselves never touch files."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from cascade_testbed.common.config import (
    AzureTraceConfig,
    ScenarioConfig,
    ScenarioError,
    TierSpec,
    default_tiers,
)
from cascade_testbed.common.files import MIB, InputFileError, check_regular, read_text
from cascade_testbed.common.link_trace import LinkTraceError, resolve_link_trace
from cascade_testbed.common.names import shown

MAX_SCENARIO_BYTES = 1 * MIB
MAX_TRACE_BYTES = 16 * MIB
MAX_AZURE_BYTES = 1024 * MIB
"""An Azure Functions trace file (a 2019 day file is ~150 MB); read line by line, keeping
only the run's window."""
TRACE_DIRS_ENV = "TESTBED_TRACE_DIRS"
"""Folders (separated by os.pathsep) a scenario may name workload traces in, besides its own
folder and the shipped scenarios/ folder."""


SHIPPED_SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
"""The project's scenarios/ folder, beside the package's folder."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ScenarioError(what)


def load_trace(path: str | Path) -> tuple[tuple[float, float], ...]:
    """(t_s, rate_hz) points of a trace CSV with the header `t_s,rate_hz`: a regular file of at
    most `MAX_TRACE_BYTES`."""
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path, MAX_TRACE_BYTES, "trace"),
                                               newline="")))
    except (InputFileError, csv.Error) as exc:
        raise ScenarioError(str(exc)) from None
    try:
        points = tuple((float(r["t_s"]), float(r["rate_hz"])) for r in rows)
    except (KeyError, TypeError, ValueError):
        raise ScenarioError(f"trace {path}: needs columns t_s,rate_hz with numbers") from None
    _check(all(math.isfinite(t) and math.isfinite(r) for t, r in points),
           f"trace {path}: t_s and rate_hz must be finite numbers")
    _check(bool(points), f"trace {path} has no rows")
    times = [t for t, _ in points]
    _check(times == sorted(times) and times[0] <= 0 and all(r >= 0 for _, r in points),
           f"trace {path}: t_s must start at 0 and increase, rates must be >= 0")
    return points


def trace_roots(scenario: Path) -> list[Path]:
    """Where a scenario's workload trace may be: its own folder, the shipped scenarios/
    folder, and the folders of $TESTBED_TRACE_DIRS (for downloaded datasets)."""
    extra = [Path(p) for p in os.environ.get(TRACE_DIRS_ENV, "").split(os.pathsep) if p]
    return [p.resolve() for p in (scenario.parent, SHIPPED_SCENARIOS, *extra)]


def resolve_trace_path(scenario: Path, name: str, what: str) -> str:
    """`name` (relative to the scenario file, or absolute) resolved, if it lies inside one of
    `trace_roots`; `ScenarioError` in one line otherwise."""
    resolved = (scenario.parent / name).resolve()
    roots = trace_roots(scenario)
    if not any(resolved.is_relative_to(r) for r in roots):
        raise ScenarioError(f"{scenario}: {what} {shown(name)} is outside the folders a "
                            f"scenario may read traces from (its own folder, "
                            f"{SHIPPED_SCENARIOS}, or ${TRACE_DIRS_ENV})")
    return str(resolved)


def load_azure(azure: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """`[devices.azure]` with `series` filled from its file: the chosen functions' values over
    the run's window (`common.azure_functions`)."""
    from cascade_testbed.common import azure_functions as af

    cfg: AzureTraceConfig = _build(AzureTraceConfig, {**azure, "series": []}, "devices.azure")
    _check(bool(cfg.file), "devices.azure.file: the trace file is missing")
    try:
        path = check_regular(cfg.file, MAX_AZURE_BYTES, "devices.azure.file")
    except InputFileError as exc:
        raise ScenarioError(str(exc)) from None
    minutes = af.window_minutes(duration_s, cfg.minute_s)
    parse = af.parse_2019 if cfg.layout == "2019" else af.parse_2021
    try:
        with path.open(encoding="utf-8", newline="") as f:
            table = parse(f, cfg.start_minute, minutes, str(path))
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    try:  # the chosen functions' rates are checked as the config is built
        cfg = dataclasses.replace(cfg, series=af.select(table, cfg, str(path)))
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return {**azure, "series": [[f, list(v)] for f, v in cfg.series],
            "window_minutes": minutes}


def load_scenario(path: str | Path) -> ScenarioConfig:
    """Read and check a scenario file; trace and gear-plan paths in it are taken relative to
    the file."""
    path = Path(path)
    try:
        data = tomllib.loads(read_text(path, MAX_SCENARIO_BYTES, "scenario"))
    except InputFileError as exc:
        raise ScenarioError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    devices = data.get("devices")
    if isinstance(devices, dict) and isinstance(devices.get("trace"), str):
        data["devices"] = {**devices, "trace": str((path.parent / devices["trace"]).resolve())}
    azure = devices.get("azure") if isinstance(devices, dict) else None
    if isinstance(azure, dict) and isinstance(azure.get("file"), str) and azure["file"] \
            and not azure.get("series"):
        data["devices"] = {**data["devices"], "azure": {**azure, "file": resolve_trace_path(
            path, azure["file"], "devices.azure.file")}}
    policy = data.get("policy")
    params = policy.get("params") if isinstance(policy, dict) else None
    if isinstance(params, dict) and isinstance(params.get("plan"), str) and params["plan"]:
        params["plan"] = str((path.parent / params["plan"]).resolve())  # a gear plan file
    if isinstance(data.get("zoo"), str) and data["zoo"]:
        data["zoo"] = str((path.parent / data["zoo"]).resolve())  # a model zoo folder
    try:
        if isinstance(data.get("tiers"), dict):
            data["tiers"] = link_traces_resolved(data["tiers"], path.parent)
        return scenario_from_dict(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def scenario_from_dict(data: dict[str, Any]) -> ScenarioConfig:
    """Build and check a scenario from TOML-shaped data (a trace file it names is read)."""
    data = dict(data)
    if isinstance(data.get("policy"), str):  # `policy = "name"` is `[policy] name = "name"`
        data["policy"] = {"name": data["policy"]}
    devices = data.get("devices")
    if isinstance(devices, dict) and isinstance(devices.get("trace"), str) \
            and not devices.get("trace_points"):
        data["devices"] = {**devices, "trace_points": [list(p) for p in
                                                       load_trace(devices["trace"])]}
    devices = data.get("devices")
    azure = devices.get("azure") if isinstance(devices, dict) else None
    if isinstance(devices, dict) and isinstance(azure, dict) and not azure.get("series"):
        duration = data.get("duration_s", ScenarioConfig.__dataclass_fields__["duration_s"]
                            .default)
        _check(isinstance(duration, int | float) and not isinstance(duration, bool)
               and 0 < duration <= 86_400, "duration_s must be a number in (0, 86400]")
        data["devices"] = {**devices, "azure": load_azure(azure, float(duration))}
    tiers_in = data.pop("tiers", None)
    if isinstance(tiers_in, dict):
        tiers_in = link_traces_resolved(tiers_in, None)
    defaults = zoo_tiers(data.get("zoo"))
    tiers = dict(defaults)
    if tiers_in is not None:
        _check(isinstance(tiers_in, dict), "tiers must be a table")
        if any(name not in defaults for name in tiers_in):
            tiers = {}  # a custom tier set replaces the defaults instead of extending them
        for name, spec in tiers_in.items():
            base = dataclasses.asdict(defaults[name]) if name in defaults else {}
            tiers[name] = _build(TierSpec, _merge(base, spec, f"tiers.{name}"), f"tiers.{name}")
    devices = data.get("devices")
    if devices is None or (isinstance(devices, dict) and "mix" not in devices):
        # Without a mix, devices are split evenly over however many tiers there are.
        data["devices"] = {**(devices or {}), "mix": ":".join("1" for _ in tiers)}
    cfg: ScenarioConfig = _build(ScenarioConfig, {**data, "tiers": tiers}, "")
    return cfg


def link_traces_resolved(tiers: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """`tiers` with each `uplink.trace` / `downlink.trace` replaced by the file it names
    (`common.link_trace.resolve_link_trace`: relative to `base` or the shipped traces, and
    there); a trace that is not a usable file is a `ScenarioError` naming the field."""
    out = dict(tiers)
    for name, tier in tiers.items():
        if not isinstance(tier, dict):
            continue
        for direction in ("uplink", "downlink"):
            link = tier.get(direction)
            if not isinstance(link, dict) or link.get("trace") in (None, ""):
                continue
            try:
                found = resolve_link_trace(link["trace"], base)
            except LinkTraceError as exc:
                raise ScenarioError(f"tiers.{str(name)[:64]}.{direction}.trace: {exc}") from None
            tier = {**tier, direction: {**link, "trace": str(found)}}
        out[name] = tier
    return out


def zoo_tiers(zoo: object) -> dict[str, TierSpec]:
    """The tiers a scenario without a [tiers] table runs: its zoo's `tiers` (zoo.json). The
    embedded zoo's are low/mid/high (`default_tiers`); another zoo's tier named low, mid or
    high takes that default tier's settings with the zoo's model, any other tier the `mid`
    settings. A [tiers] table then changes or replaces these, as it does the defaults."""
    defaults = default_tiers()
    if zoo is None:
        return defaults
    _check(isinstance(zoo, str) and bool(zoo), "zoo must be the path of a model zoo folder")
    from cascade_testbed.common.modelzoo import (  # numpy: only for a scenario naming a zoo
        ZooError,
        open_zoo,
    )

    try:
        index_tiers = open_zoo(str(zoo)).index.get("tiers")
    except ZooError as exc:
        raise ScenarioError(f"zoo: {exc}") from None
    if not isinstance(index_tiers, dict) or not index_tiers \
            or not all(isinstance(m, str) for m in index_tiers.values()):
        raise ScenarioError(f"zoo {zoo}: zoo.json needs `tiers`, a table of tier name -> "
                            "light model")
    out = {}
    for tier, model in index_tiers.items():
        base = defaults.get(tier, defaults["mid"])
        try:
            out[tier] = dataclasses.replace(base, model=model)
        except ScenarioError as exc:
            raise ScenarioError(f"zoo {zoo}: tiers.{str(tier)[:64]}: {exc}") from None
    return out


def scenario_to_dict(cfg: ScenarioConfig) -> dict[str, Any]:
    """The scenario as run, TOML-ready (None values are dropped: TOML has no null)."""

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, (list, tuple)):
            return [strip(v) for v in obj]
        return obj

    return strip(dataclasses.asdict(cfg))  # type: ignore[no-any-return]


def _merge(base: dict[str, Any], over: Any, where: str) -> dict[str, Any]:
    _check(isinstance(over, dict), f"{where} must be a table")
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base.get(k), dict) else v
    return out


def _build(cls: type, data: Any, where: str) -> Any:
    """Turn a TOML table into dataclass `cls`, rejecting unknown keys and wrong types."""
    if dataclasses.is_dataclass(data):
        return data
    _check(isinstance(data, dict), f"{where or 'scenario'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    _check(not unknown, f"{where or 'scenario'}: unknown keys {shown(sorted(map(str, unknown)))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _check(not missing, f"{where or 'scenario'}: missing keys {missing}")
    kwargs = {}
    for key, value in data.items():
        here = f"{where}.{key}" if where else key
        kwargs[key] = _convert(hints[key], value, here)
    try:
        return cls(**kwargs)
    except ScenarioError as exc:
        raise ScenarioError(f"{where + ': ' if where else ''}{exc}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where)
    if origin is Literal:
        _check(value in typing.get_args(hint),
               f"{where} must be one of {typing.get_args(hint)} (got {value!r})")
        return value
    if origin is dict:
        _check(isinstance(value, dict), f"{where} must be a table")
        return dict(value)
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), f"{where} must be a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), f"{where} must be a list of {len(args)} items")
        return tuple(_convert(a, v, f"{where}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{where} must be a number (got {value!r})")
        return float(value)
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"{where} must be an integer (got {value!r})")
        return value
    if hint is bool:
        _check(isinstance(value, bool), f"{where} must be true or false (got {value!r})")
        return value
    if hint is str:
        _check(isinstance(value, str), f"{where} must be a string (got {value!r})")
        return value
    return value
