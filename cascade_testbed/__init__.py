"""cascade-testbed: emulated edge devices running light models, one shared batching server and
the harness that runs and judges them. Its parts live under this one name (`common`, `server`,
`emulated_devices`, `testbed`, `examples`), so a user's own `server.py` or `common.py` beside
their policy neither shadows them nor is shadowed by them."""
