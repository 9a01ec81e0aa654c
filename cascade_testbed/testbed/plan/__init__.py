"""CascadeServe's offline phase: validation-split predictions, batch-latency simulation, the pure
gear planner, the plan's I/O, and the steps run before a run starts (`prepare`)."""
