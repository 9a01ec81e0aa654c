"""Inference delivery networks: a server process as one node of a tree (`node`), its pure
routing choice (`routing`) and model allocation (`alloc`: INFIDA's mirror ascent and greedy)."""
