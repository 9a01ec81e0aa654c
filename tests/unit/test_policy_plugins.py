"""Policies as plugins: `package.module:Class` specs and `cascade_testbed.policies` entry
points
are checked before anything is imported, load only `Policy` subclasses, and their params are
checked by the harness before any process starts (server/scheduling/plugins.py)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cascade_testbed.common.config import PolicyConfig, ScenarioConfig, ScenarioError
from cascade_testbed.common.names import BadName, check_policy_name, is_policy_spec, policy_label
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.examples.constant import ConstantPolicy
from cascade_testbed.server.scheduling import POLICIES, make_policy
from cascade_testbed.server.scheduling.base import PolicyError, check_params
from cascade_testbed.server.scheduling.multitasc import MultiTASCPolicy
from cascade_testbed.server.scheduling.plugins import (
    ENTRY_POINT_GROUP,
    available,
    check_policy,
    declared_params,
    entry_points,
    parse_spec,
    resolve,
)
from cascade_testbed.testbed import cli
from cascade_testbed.testbed.commands import claims, runs, shared
from cascade_testbed.testbed.orchestrator import default_run_dir

EXAMPLE = "cascade_testbed.examples.constant"
"""The example policy's module, as a user names it in a spec."""

runner = CliRunner()
_serial = itertools.count()

GOOD = '''
from typing import Any, ClassVar
from cascade_testbed.server.scheduling.base import Policy, PolicyDecision, check_params

class Mine(Policy):
    """Holds nothing; says so."""
    name: ClassVar[str] = "mine"
    DEFAULTS: ClassVar[dict[str, Any]] = {"gain": 1.0, "mode": "a", "on": False}

    def __init__(self, params=None):
        self.p = check_params(self.name, params or {}, self.DEFAULTS)

    def join(self, device, now):
        return 0.25

    def leave(self, device_id, now):
        pass

    def step(self, view):
        return PolicyDecision()
'''


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        Callable[[str], str]]:
    """Write a module into a folder on sys.path; returns its (unique) name. Modules imported
    from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"plugin_mod_{next(_serial)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def fake_distribution(root: Path, entries: dict[str, str], dist: str = "fakeplug") -> None:
    """An installed distribution as importlib.metadata finds it: a `*.dist-info` folder with
    METADATA and entry_points.txt, in a folder on sys.path."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


class TestSpecs:
    @pytest.mark.parametrize("text", ["a:B", "pkg.mod:Cls", "_p.m_2:_C", f"{EXAMPLE}:X"])
    def test_valid_specs(self, text: str) -> None:
        assert is_policy_spec(text) and check_policy_name(text) == text
        assert str(parse_spec(text)) == text

    @pytest.mark.parametrize("text", ["a", "a:", ":B", "a:B:C", "a.:B", "../x:Y", "a/b:C",
                                      "a:B.C", "a b:C", "1a:B", "a:B\n", "é:B", "a" * 199 + ":B",
                                      "", 3])
    def test_invalid_specs_are_refused_before_anything_is_imported(self, text: Any) -> None:
        assert not is_policy_spec(text)
        with pytest.raises(PolicyError, match=r"package\.module:Class"):
            parse_spec(text)

    def test_names_are_still_names(self) -> None:
        assert check_policy_name("multitasc++") == "multitasc++"
        with pytest.raises(BadName, match=r"package\.module:Class"):
            check_policy_name("../etc")

    def test_the_harness_and_device_packages_cannot_hold_a_policy(self) -> None:
        for text in ("cascade_testbed.testbed.cli:app", "cascade_testbed.emulated_devices.main:X"):
            with pytest.raises(PolicyError, match="cannot live in"):
                parse_spec(text)

    def test_a_spec_is_a_valid_policy_in_a_scenario_and_the_shorthand_works(self) -> None:
        assert PolicyConfig(f"{EXAMPLE}:ConstantPolicy").name.endswith(":ConstantPolicy")
        cfg = scenario_from_dict({"policy": f"{EXAMPLE}:ConstantPolicy"})
        assert cfg.policy.name == f"{EXAMPLE}:ConstantPolicy" and cfg.policy.params == {}
        for bad in ("a/b:C", "x:y:z", "../x"):
            with pytest.raises(ScenarioError, match="policy name"):
                PolicyConfig(bad)

    def test_labels_are_names_safe_for_paths(self) -> None:
        assert policy_label("multitasc++") == "multitasc++"
        assert policy_label(f"{EXAMPLE}:ConstantPolicy") == \
            f"{EXAMPLE}.ConstantPolicy"
        long = ".".join(["_pkg"] * 30) + ":_Cls"
        label = policy_label(long)
        assert len(label) <= 64 and label.endswith("._Cls") and label[0].isalnum()
        run_dir = default_run_dir(ScenarioConfig(
            policy=PolicyConfig(f"{EXAMPLE}:ConstantPolicy")))
        assert ":" not in run_dir.name and f"{EXAMPLE}.ConstantPolicy" in run_dir.name
        with pytest.raises(BadName):
            policy_label("a/b")


class TestLoading:
    def test_a_policy_subclass_loads_and_builds_with_its_params(
            self, plugin_dir: Callable[[str], str]) -> None:
        mod = plugin_dir(GOOD)
        cls = check_policy(f"{mod}:Mine", {"gain": 2})
        assert cls.__name__ == "Mine" and declared_params(cls) == {"gain": 1.0, "mode": "a",
                                                                   "on": False}
        policy = make_policy(f"{mod}:Mine", {"gain": 2})
        assert policy.name == "mine" and policy.p["gain"] == 2.0  # type: ignore[attr-defined]

    def test_built_ins_resolve_by_name_and_by_spec(self) -> None:
        assert resolve("multitasc") is MultiTASCPolicy is POLICIES["multitasc"]
        spec = "cascade_testbed.server.scheduling.multitasc:MultiTASCPolicy"
        assert resolve(spec) is MultiTASCPolicy
        assert resolve(f"{EXAMPLE}:ConstantPolicy") is ConstantPolicy

    @pytest.mark.parametrize(("source", "attr", "needle"), [
        (GOOD, "Missing", "has no 'Missing'"),
        (GOOD + "\nclass Plain:\n    name = 'plain'\n", "Plain",
         "class Plain, not a subclass of cascade_testbed.server.scheduling.base.Policy"),
        (GOOD + "\nthing = 3\n", "thing", "a int, not a subclass"),
        (GOOD + "\nfrom cascade_testbed.server.scheduling.base import Policy as P\n", "P",
         "class Policy, not"),
        (GOOD + "\nclass NoStep(Policy):\n    name = 'x'\n    def __init__(self, p=None):"
         "\n        pass\n    def join(self, d, n):\n        return 0.0\n", "NoStep",
         "does not define leave, step"),
        (GOOD + "\nclass BadName(Mine):\n    name = '../x'\n", "BadName", "must be a short name"),
        (GOOD + "\nclass NoArgs(Mine):\n    def __init__(self):\n        pass\n", "NoArgs",
         "must accept the params table"),
        (GOOD + "\nclass BadDefaults(Mine):\n    DEFAULTS = [1]\n", "BadDefaults",
         "DEFAULTS must be a dict"),
        ("raise RuntimeError('boom')\n", "Mine", "failed: RuntimeError: boom"),
    ])
    def test_what_cannot_be_a_policy_is_one_clear_error(
            self, plugin_dir: Callable[[str], str], source: str, attr: str, needle: str) -> None:
        mod = plugin_dir(source)
        with pytest.raises(PolicyError, match=r"^policy ") as err:
            check_policy(f"{mod}:{attr}")
        assert needle in str(err.value) and "\n" not in str(err.value)

    def test_a_missing_module(self) -> None:
        with pytest.raises(PolicyError, match=r"cannot import 'no_such_pkg_xyz\.mod'"):
            check_policy("no_such_pkg_xyz.mod:Policy")

    def test_an_unknown_name_lists_the_known_ones(self) -> None:
        with pytest.raises(PolicyError) as err:
            check_policy("oracle")
        assert str(err.value).startswith("unknown policy 'oracle'; known: constant, ")
        assert {"multitasc", "multitasc++", "static"} <= set(
            str(err.value).split("known: ")[1].split(" (")[0].split(", "))


class TestEntryPoints:
    def test_an_installed_entry_point_is_found_by_name(
            self, tmp_path: Path, plugin_dir: Callable[[str], str]) -> None:
        mod = plugin_dir(GOOD)
        fake_distribution(tmp_path, {"fakemine": f"{mod}:Mine"})
        assert entry_points()["fakemine"] == f"{mod}:Mine"
        assert resolve("fakemine").__name__ == "Mine"
        assert make_policy("fakemine").join(None, 0.0) == 0.25  # type: ignore[arg-type]
        entry = next(e for e in available() if e.name == "fakemine")
        assert entry.source == "entry point (fakeplug)" and not entry.error
        assert entry.params == {"gain": 1.0, "mode": "a", "on": False}
        assert entry.doc == "Holds nothing; says so"

    def test_this_project_declares_the_example(self) -> None:
        assert entry_points()["constant"] == f"{EXAMPLE}:ConstantPolicy"
        assert resolve("constant") is ConstantPolicy

    def test_broken_and_shadowing_entry_points_are_listed_with_why_and_never_used(
            self, tmp_path: Path, plugin_dir: Callable[[str], str]) -> None:
        mod = plugin_dir(GOOD)
        fake_distribution(tmp_path, {"fakegone": f"{mod}:Gone", "static": f"{mod}:Mine",
                                     "fakebad": "not a spec"})
        found = {e.name: e for e in available()}
        assert "has no 'Gone'" in found["fakegone"].error
        assert "shadowed" in [e for e in available() if e.name == "static"][1].error
        assert found["fakebad"].error and "fakebad" not in entry_points()
        assert resolve("static") is POLICIES["static"]
        with pytest.raises(PolicyError, match="has no 'Gone'"):
            resolve("fakegone")
        with pytest.raises(PolicyError, match="unknown policy 'fakebad'"):
            resolve("fakebad")


class TestParams:
    def test_unknown_names_are_named_with_the_accepted_ones(self) -> None:
        with pytest.raises(PolicyError) as err:
            check_policy("constant", {"treshold": 0.4})
        assert str(err.value) == ("policy 'constant': unknown parameter 'treshold'; accepted: "
                                  "threshold, tiers (defaults: testbed policies)")

    @pytest.mark.parametrize(("params", "kind"), [
        ({"target": "high"}, "a number"), ({"target": True}, "a number"),
        ({"group_by": 3}, "a string"),
    ])
    def test_wrong_kinds_name_the_parameter(self, params: dict[str, Any], kind: str) -> None:
        with pytest.raises(PolicyError, match=f"parameter '{next(iter(params))}' must be {kind}"):
            check_policy("multitasc", params)

    def test_kinds_follow_the_defaults(self) -> None:
        known = {"x": 1.0, "n": 2, "flag": False, "s": "a", "t": {}, "l": [1], "any": None}
        assert check_params("p", {"x": 2, "n": 3, "flag": True, "s": "b", "t": {"a": 1},
                                  "l": [], "any": "whatever"}, known) == \
            {"x": 2.0, "n": 3, "flag": True, "s": "b", "t": {"a": 1}, "l": [], "any": "whatever"}
        for key, value in (("flag", 1), ("t", [1]), ("l", {}), ("s", 1)):
            with pytest.raises(PolicyError, match=f"parameter '{key}'"):
                check_params("p", {key: value}, known)

    def test_the_harness_checks_params_without_building_the_policy(self) -> None:
        # gears without a plan cannot be built, but the harness makes its plan later: its
        # params are still checked by name and kind
        assert check_policy("gears", {"safety_factor": 1.2}) is POLICIES["gears"]
        with pytest.raises(PolicyError, match="no_cascade' must be true or false"):
            check_policy("gears", {"no_cascade": "yes"})


class TestCli:
    @pytest.fixture(autouse=True)
    def no_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*args: object, **kw: object) -> None:
            raise AssertionError("a run started")
        monkeypatch.setattr(runs, "run_scenario", refuse)
        monkeypatch.setattr(claims, "run_scenario", refuse)
        monkeypatch.setattr(shared.console, "width", 300)  # one line is one line

    def test_policies_lists_built_ins_and_entry_points_with_params(self) -> None:
        res = runner.invoke(cli.app, ["policies"])
        assert res.exit_code == 0, res.output
        for needle in ("static  (built-in, cascade_testbed.server.scheduling.static:StaticPolicy)",
                       "constant  (entry point (cascade-testbed), "
                       f"{EXAMPLE}:ConstantPolicy)",
                       "params: threshold = 0.5, tiers = {}", 'group_by = "tier"',
                       "no_cascade = false", "params: none"):
            assert needle in res.output, needle

    @pytest.mark.parametrize(("args", "needle"), [
        (["--policy", "no_such_pkg_xyz:P"], "cannot import 'no_such_pkg_xyz'"),
        (["--policy", f"{EXAMPLE}:Nope"], "has no 'Nope'"),
        (["--policy", "oracle"], "unknown policy 'oracle'"),
    ])
    def test_up_refuses_a_bad_policy_in_one_line(self, args: list[str], needle: str) -> None:
        res = runner.invoke(cli.app, ["up", *args])
        assert res.exit_code == 2 and needle in res.output
        assert res.output.count("\n") == 1 and "Traceback" not in res.output

    @pytest.mark.parametrize(("policy", "needle"), [
        ('name = "multitasc"\nparams = { targt = 0.9 }',
         "unknown parameter 'targt'; accepted: down_step, group_by,"),
        ('name = "constant"\nparams = { threshold = "high" }',
         "parameter 'threshold' must be a number"),
        (f'name = "{EXAMPLE}:ConstantPolicy"\nparams = {{ tiers = 0.3 }}',
         "parameter 'tiers' must be a table"),
    ])
    def test_run_refuses_bad_params_before_anything_starts(
            self, tmp_path: Path, policy: str, needle: str) -> None:
        path = tmp_path / "s.toml"
        path.write_text(f'name = "s"\n[policy]\n{policy}\n')
        res = runner.invoke(cli.app, ["run", str(path)])
        assert res.exit_code == 2 and needle in res.output, res.output

    def test_sweep_checks_every_point(self, tmp_path: Path) -> None:
        path = tmp_path / "s.toml"
        path.write_text(f'name = "s"\n[sweep]\npolicy = ["static", "{EXAMPLE}:Nope"]\n')
        res = runner.invoke(cli.app, ["sweep", str(path), "--dry-run"])
        assert res.exit_code == 2 and "has no 'Nope'" in res.output
        path.write_text('name = "s"\n[sweep]\npolicy = ["static", "constant", '
                        f'"{EXAMPLE}:ConstantPolicy"]\n')
        res = runner.invoke(cli.app, ["sweep", str(path), "--dry-run",
                                      "--out", str(tmp_path / "sw")])
        assert res.exit_code == 0 and f"002-policy={EXAMPLE}-ConstantPolicy\n" in res.output

    def test_claims_check_every_job(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import dataclasses

        from cascade_testbed.testbed.claims import runner as claims_runner

        real_plan = claims_runner.plan

        def bad_plan(*args: Any, **kw: Any) -> Any:
            jobs = real_plan(*args, **kw)
            job = jobs.jobs[0]
            bad = dataclasses.replace(job.cfg, policy=PolicyConfig("multitasc", {"speed": 1}))
            jobs.jobs[0] = dataclasses.replace(job, cfg=bad)
            return jobs

        monkeypatch.setattr(claims_runner, "plan", bad_plan)
        res = runner.invoke(cli.app, ["claims", "--quick", "--dry-run"])
        assert res.exit_code == 2 and "unknown parameter 'speed'" in res.output
