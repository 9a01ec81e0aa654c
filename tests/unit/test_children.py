"""The harness's children: started without multiprocessing polling every earlier child (which
made starting 1,000 devices quadratic), and still all joined by `reap`."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection

from cascade_testbed.testbed.children import Child, reap, recv, spawn


def _entry(pipe: Connection) -> None:
    pipe.send({"event": "ready"})
    pipe.recv()  # until the harness says anything, or goes away


def test_children_are_tracked_by_the_harness_alone_and_reaped() -> None:
    ctx = mp.get_context("fork")
    children: list[Child] = [spawn(ctx, f"c{i}", _entry) for i in range(3)]
    assert [recv(c, 10.0) for c in children] == [{"event": "ready"}] * 3
    assert not set(mp.active_children()) & {c.proc for c in children}
    reap(children, grace_s=5.0)
    assert all(c.proc.exitcode is not None for c in children)
    assert all(c.conn.closed for c in children)
