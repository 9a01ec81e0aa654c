"""A run spread over the nodes of a Ray cluster (`--ray`): pure placement and file shipping,
the node agent (a Ray actor that forks its node's device processes) and the driver.

Only `driver` and `agent` touch Ray, and only the `--ray` path imports them: everything else
in the testbed works without Ray installed.
"""
