"""Devices and server never import each other; the harness imports neither (DESIGN.md)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str) -> list[str]:
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / package)])
            if m.name != "__main__"]


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize("module,forbidden", [
    *[(m, "server") for m in modules("emulated_devices")],
    *[(m, "emulated_devices") for m in modules("server")],
    *[(m, "server") for m in modules("testbed")],
    *[(m, "emulated_devices") for m in modules("testbed")],
])
def test_no_sideways_imports(module: str, forbidden: str) -> None:
    """Each module imports alone in a fresh interpreter without pulling in the other side."""
    assert forbidden not in imported_after(module)
