"""What every process the harness starts does first: die with its parent, leave Ctrl-C to it."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits, so a killed harness leaves no
    orphans. Elsewhere it is a no-op and the harness's own clean-up has to suffice."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def leave_interrupts_to_parent() -> None:
    """Ctrl-C and a closed terminal's SIGHUP reach the whole foreground process group; the
    harness alone decides what they mean (a clean stop), so children ignore both and stop on
    the harness's word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
