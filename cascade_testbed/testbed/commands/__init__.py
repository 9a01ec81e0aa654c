"""The `testbed` commands, one module per group, each thin over the library: options in, a
library call, what it made printed, an exit code out (`testbed.verdict`). testbed/cli.py builds
the typer app from them.

    runs        up, run, sweep: runs of a scenario
    claims      claims: the papers' claims, tuned, run and judged
    results     report, compare: what finished runs measured
    plan        plan: CascadeServe's offline phase
    zoo         zoo init: a model zoo from your own models and data
    dashboard   watch (and the live view of `up`/`run --dashboard`)
    parts       policies, server, device: the system under test's parts one at a time, and
                the check of a run's policy; the only command module that imports `server` or
                `emulated_devices` (lazily, tests/unit/test_layering.py)
    shared      the console and what several commands share

The library never imports these modules (tests/unit/test_layering.py).
"""
