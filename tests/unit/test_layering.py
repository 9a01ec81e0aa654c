"""The floors of DESIGN.md, read from the source: every import statement, at module level or
inside a function, of every module of the four packages, in one process.

    testbed/                      floor 3: may import everything below
    server/   emulated_devices/   floor 2: import only `common`, never each other
    common/                       floor 1: imports none of the three

The harness imports `server` and `emulated_devices` only lazily (inside a function) and only from
one command module and its child-process entry points, so the harness process stays light. Inside
the harness the command modules (testbed/commands/) sit above the library: only testbed/cli.py
imports them, and only testbed/__main__.py imports it. Nothing imports by name at run time
(`importlib.import_module`, `__import__`), which no reading of the source could follow, except
the loader of user policies (`BY_NAME_DOOR`).
The reader is scripts/import_graph.py's, which also draws the picture.
"""

from __future__ import annotations

import pytest

from scripts.import_graph import PACKAGES, Import, by_name_imports, imports_of, sources

ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "server": {"common", "server"},
    "emulated_devices": {"common", "emulated_devices"},
    "testbed": set(PACKAGES),
}
HARNESS_DOORS = {"cascade_testbed/testbed/commands/parts.py", "cascade_testbed/testbed/launch.py"}
"""The only harness modules that may import the floor below them, and only lazily: the command
module of `policies`, `server`, `device` and of the policy check, and the children's entry
points."""
COMMANDS = "cascade_testbed.testbed.commands"
"""The command modules: above the library, imported only by each other and testbed/cli.py
(which only testbed/__main__.py imports)."""


@pytest.fixture(scope="module")
def every_import() -> list[Import]:
    return [imp for path, src in sources().items() for imp in imports_of(src, path)]


class TestTheReader:
    """The checker must see what it claims to see, or the rules below pass vacuously."""

    def test_it_sees_imports_inside_functions_and_resolves_relative_ones(self) -> None:
        src = ("import os\nfrom . import sibling\nfrom ..scheduling.base import X\n"
               "def f():\n    from cascade_testbed.server.main import main\n"
               "class C:\n    async def g(self):\n"
               "        import cascade_testbed.emulated_devices.device\n")
        found = {(i.target, i.lazy) for i in imports_of(src, "cascade_testbed/server/idn/node.py")}
        ns = "cascade_testbed"
        assert found == {("os", False), (f"{ns}.server.idn", False),
                         (f"{ns}.server.scheduling.base", False), (f"{ns}.server.main", True),
                         (f"{ns}.emulated_devices.device", True)}

    def test_a_package_init_resolves_relative_imports_against_itself(self) -> None:
        found = imports_of("from .base import Policy\n",
                           "cascade_testbed/server/scheduling/__init__.py")
        assert [i.target for i in found] == ["cascade_testbed.server.scheduling.base"]

    def test_it_finds_imports_by_name(self) -> None:
        assert by_name_imports("import importlib\nimportlib.import_module('x')\n"
                               "y = __import__('z')\n") == [2, 3]

    def test_it_reads_every_package(self, every_import: list[Import]) -> None:
        assert {i.source for i in every_import} == set(PACKAGES)
        assert any(i.lazy for i in every_import)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_floor_imports_only_the_floors_below(every_import: list[Import],
                                                  package: str) -> None:
    wrong = [f"{i.path}:{i.line} imports {i.target}" for i in every_import
             if i.source == package and i.package in PACKAGES
             and i.package not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_the_harness_reaches_down_only_lazily_and_only_through_its_doors(
        every_import: list[Import]) -> None:
    wrong = [f"{i.path}:{i.line} imports {i.target}" + ("" if i.lazy else " at module level")
             for i in every_import
             if i.source == "testbed" and i.package in {"server", "emulated_devices"}
             and (i.path not in HARNESS_DOORS or not i.lazy)]
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_imports_the_commands(every_import: list[Import]) -> None:
    def may_import(path: str, target: str) -> bool:
        if target == "cascade_testbed.testbed.cli":
            return path == "cascade_testbed/testbed/__main__.py"
        if target == COMMANDS or target.startswith(COMMANDS + "."):
            return (path == "cascade_testbed/testbed/cli.py"
                    or path.startswith("cascade_testbed/testbed/commands/"))
        return True

    wrong = [f"{i.path}:{i.line} imports {i.target}" for i in every_import
             if not may_import(i.path, i.target)]
    assert not wrong, "\n".join(wrong)
    assert any(i.path == "cascade_testbed/testbed/cli.py" and i.target.startswith(COMMANDS)
               for i in every_import)


BY_NAME_DOOR = "cascade_testbed/server/scheduling/plugins.py"
"""The one module that imports by name: a user's policy (`package.module:Class`) is named in a
scenario. It checks the spec first and refuses the harness and device packages."""


def test_nothing_imports_by_name() -> None:
    wrong = [f"{path}:{line}" for path, src in sources().items() for line in by_name_imports(src)
             if path != BY_NAME_DOOR]
    assert not wrong, "\n".join(wrong)


def test_the_policy_door_imports_by_name_in_one_place() -> None:
    assert len(by_name_imports(sources()[BY_NAME_DOOR])) == 1
