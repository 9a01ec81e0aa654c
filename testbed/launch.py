"""Process entry trampoline: the harness names a device or server entry by module and function,
so it starts them without importing their packages (the forkserver has them preloaded)."""

from __future__ import annotations

import importlib
from typing import Any


def call(module: str, function: str, *args: Any) -> None:
    getattr(importlib.import_module(module), function)(*args)
