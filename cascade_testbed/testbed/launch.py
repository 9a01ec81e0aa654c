"""Entry points of the processes the harness starts, one per kind of child.

Each imports its package only when the child runs it, so the harness process itself never loads
aiohttp or onnxruntime; the forkserver preloads the packages once for all children. These are
plain imports (the layering test reads them): the harness is the floor above both packages.
"""

from __future__ import annotations

from typing import Any


def server_process(*args: Any) -> None:
    from cascade_testbed.server.main import server_process as run

    run(*args)


def node_process(*args: Any) -> None:
    from cascade_testbed.server.main import node_process as run

    run(*args)


def device_process(*args: Any) -> None:
    from cascade_testbed.emulated_devices.main import device_process as run

    run(*args)
