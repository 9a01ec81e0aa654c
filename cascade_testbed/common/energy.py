"""Energy from a run's times and bytes: the power models' math (docs/energy.md). Pure.

A device spends `active_w` while its light model computes and `idle_w` otherwise; its radio
spends energy per byte sent and received, and after each transfer it stays in a high-power
"tail" (LTE keeps the radio connected ~11.6 s after the last packet: Huang et al., MobiSys
2012). A transfer inside the previous transfer's tail only extends it, so each transfer is
charged the tail time it adds (`RadioMeter`): the charges add up to the tail energy of the
whole run, and a sample sent while the radio is still up is charged less than one that wakes
it. The server's accelerator spends `active_w` while a batch runs and `idle_w` while a
provisioned replica waits. The power figures are literature values (config.PowerSpec), so the
joules are a model's, not a measurement of this host.
"""

from __future__ import annotations

from dataclasses import dataclass

from cascade_testbed.common.config import PowerSpec, ServerPowerSpec


def compute_j(power: PowerSpec, seconds: float) -> float:
    """Energy of `seconds` of light-model computation."""
    return power.active_w * max(seconds, 0.0)


def idle_j(power: PowerSpec, span_s: float, busy_s: float) -> float:
    """Energy of the time in `span_s` the device did not compute."""
    return power.idle_w * max(span_s - busy_s, 0.0)


def bytes_j(power: PowerSpec, up_bytes: int, down_bytes: int) -> float:
    """Radio energy of the bytes themselves (without the tail)."""
    return power.up_j_per_byte * up_bytes + power.down_j_per_byte * down_bytes


@dataclass(slots=True)
class RadioMeter:
    """The radio of one device: each transfer's energy, given when it ends (device clock).
    Transfers may be reported out of order (a reply known before a report goes out): one
    ending before the last end adds no tail."""

    power: PowerSpec
    last_end: float | None = None

    def tail_j(self, end: float) -> float:
        """The tail energy a transfer ending at `end` adds: a whole tail after a quiet
        radio, else the part that outlasts the previous transfer's tail."""
        p = self.power
        if self.last_end is None or p.tail_s <= 0:
            added = 1.0
        else:
            added = min(max(end - self.last_end, 0.0) / p.tail_s, 1.0)
        self.last_end = end if self.last_end is None else max(self.last_end, end)
        return p.tail_j * added

    def transfer(self, end: float, up_bytes: int = 0, down_bytes: int = 0) -> float:
        """Joules of one transfer: its bytes and the tail it adds."""
        return bytes_j(self.power, up_bytes, down_bytes) + self.tail_j(end)


def server_j(power: ServerPowerSpec, busy_s: float, provisioned_s: float) -> dict[str, float]:
    """The accelerator's energy: busy replica-seconds at `active_w`, the rest of the
    provisioned replica-seconds at `idle_w`."""
    busy = max(busy_s, 0.0)
    idle = max(provisioned_s - busy, 0.0)
    return {"active_j": power.active_w * busy, "idle_j": power.idle_w * idle,
            "total_j": power.active_w * busy + power.idle_w * idle}
