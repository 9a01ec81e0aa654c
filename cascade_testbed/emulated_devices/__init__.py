"""One emulated edge device per process: arrivals, light model, forwarding, emulation, client."""
