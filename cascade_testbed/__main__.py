"""`python -m cascade_testbed` runs the CLI, as `python -m cascade_testbed.testbed` and the
`testbed` console script do."""

import runpy

runpy.run_module("cascade_testbed.testbed", run_name="__main__", alter_sys=True)
