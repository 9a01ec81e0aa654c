"""The versions and backends a run actually used, written into every run folder."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

PACKAGES = ("cascade-testbed", "aiohttp", "onnxruntime", "numpy", "msgpack", "psutil",
            "prometheus-client")


def collect_versions() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "onnxruntime_provider": "CPUExecutionProvider",
        "device_threads": {"intra_op": 1, "inter_op": 1},
        "process_start_method": "forkserver",
    }
