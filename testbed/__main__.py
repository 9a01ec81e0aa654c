"""`python -m testbed` runs the CLI (the same as the `testbed` console script)."""

from testbed.cli import app

if __name__ == "__main__":
    app()
