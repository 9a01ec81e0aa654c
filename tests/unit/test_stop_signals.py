"""The harness's stop-signal bookkeeping: an interrupt dropped by a finalizer is not lost;
the first signal names the stop."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cascade_testbed.testbed.stop_signals import StopSignals


def test_an_interrupt_that_was_dropped_is_raised_at_the_next_check() -> None:
    ctrl_c = StopSignals()
    ctrl_c.check()  # nothing yet
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_signal(signal.SIGINT, None)  # raised inside a __del__: printed and dropped
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()  # the run loop raises it after its next poll
    ctrl_c.check()  # once only


def test_an_interrupt_the_run_handled_is_not_raised_again() -> None:
    ctrl_c = StopSignals()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_signal(signal.SIGINT, None)
    ctrl_c.handled_all()  # run_scenario caught it and is stopping cleanly
    ctrl_c.check()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_signal(signal.SIGINT, None)  # a second Ctrl-C while stopping, dropped ...
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()  # ... still kills the devices


def test_the_first_signal_names_the_stop() -> None:
    stops = StopSignals()
    assert stops.name == "SIGINT"  # none yet: what a run stopped without one reports
    with pytest.raises(KeyboardInterrupt):
        stops._on_signal(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        stops._on_signal(signal.SIGINT, None)  # Ctrl-C while stopping: still the TERM's stop
    assert stops.name == "SIGTERM"


def test_a_signal_while_deferred_is_raised_at_the_next_check() -> None:
    stops = StopSignals()
    stops.install()
    try:
        with stops.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run, and not raised
        assert stops.count == 1 and stops.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            stops.check()
    finally:
        stops.restore()
