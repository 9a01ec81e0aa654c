"""`python -m cascade_testbed.testbed` runs the CLI (the same as the `testbed` console script)."""

from cascade_testbed.testbed.cli import app

if __name__ == "__main__":
    app()
