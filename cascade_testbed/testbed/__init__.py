"""cascade-testbed's harness, the top floor: CLI, orchestration, faults, sweeps, results and the
CascadeServe planner. It starts `server` and `emulated_devices` as processes and imports them
only lazily, from the CLI and the child-process entry points (`testbed.launch`).
"""

__version__ = "0.1.0"
