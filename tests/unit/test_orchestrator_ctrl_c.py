"""The harness's Ctrl-C bookkeeping: an interrupt dropped by a finalizer is not lost."""

from __future__ import annotations

import pytest

from testbed.orchestrator import _CtrlC


def test_an_interrupt_that_was_dropped_is_raised_at_the_next_check() -> None:
    ctrl_c = _CtrlC()
    ctrl_c.check()  # nothing yet
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_sigint(2, None)  # raised inside a __del__: printed and dropped
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()  # the run loop raises it after its next poll
    ctrl_c.check()  # once only


def test_an_interrupt_the_run_handled_is_not_raised_again() -> None:
    ctrl_c = _CtrlC()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_sigint(2, None)
    ctrl_c.handled_all()  # run_scenario caught it and is stopping cleanly
    ctrl_c.check()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_sigint(2, None)  # a second Ctrl-C while stopping, dropped ...
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()  # ... still kills the devices
