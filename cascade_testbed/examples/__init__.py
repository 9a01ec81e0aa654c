"""Worked examples of extending the testbed from outside its packages (docs/policies.md)."""
