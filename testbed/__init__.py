"""cascade-testbed's harness: CLI, scenarios, process orchestration, records and metrics.

Leaf modules here (`protocol`, `config`, `records`, `modelzoo`, `events`) are shared by the
device and server packages; the harness itself only starts those as processes.
"""

__version__ = "0.1.0"
