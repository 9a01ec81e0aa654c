"""Ray Serve beside our server: `bench_peers.py --peers ray`, kept under its old name.
Ray is installed only for the benchmark, in .peers/ray (the project never depends on it):

    .venv/bin/python scripts/bench_ray.py --setup     # = bench_peers.py --setup ray
    flock /tmp/bench.lock .venv/bin/python scripts/bench_ray.py [bench_peers.py options]
"""

from __future__ import annotations

import sys

from bench_peers import main

if __name__ == "__main__":
    args = sys.argv[1:]
    main(["--setup", "ray"] if args == ["--setup"] else ["--peers", "ray", *args])
