"""Factories for tests: policy inputs with small, explicit numbers."""

from __future__ import annotations

from cascade_testbed.server.scheduling.base import (
    CurvePoint,
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    ServerWindow,
    SystemView,
)


def linear_curve(base_acc: float, gain: float) -> tuple[CurvePoint, ...]:
    """forward_rate = threshold, accuracy = base + gain * forward_rate."""
    return tuple(CurvePoint(t / 20, t / 20, base_acc + gain * t / 20) for t in range(21))


def device(dev: str, tier: str, gain: float = 0.3, initial: float = 0.8) -> DeviceInfo:
    return DeviceInfo(device_id=dev, tier=tier, model=f"light-{tier}",
                      light_accuracy=1.0 - gain, curve=linear_curve(1.0 - gain - 0.05, gain),
                      initial_threshold=initial)


def window(met: int, missed: int, threshold: float = 0.8) -> DeviceWindow:
    n = met + missed
    return DeviceWindow(window_s=0.5, generated=n, forwarded=n // 2, answered=n, slo_met=met,
                        slo_missed=missed, fallback=0, threshold=threshold,
                        mean_light_confidence=0.8, light_ms_mean=10.0)


def server(queue_len: int = 0, mean_queue_ms: float = 1.0, busy: float = 0.5,
           max_batch_size: int = 8) -> ServerWindow:
    return ServerWindow(window_s=0.5, arrivals=100, completed=100, queue_len=queue_len,
                        max_queue_size=256, mean_queue_ms=mean_queue_ms, mean_batch_size=4.0,
                        busy_fraction=busy, max_batch_size=max_batch_size)


def view(now: float, devices: dict[str, tuple[DeviceInfo, float, DeviceWindow | None]],
         srv: ServerWindow, slo_ms: float = 150.0, fresh: bool = True) -> SystemView:
    return SystemView(now=now, slo_ms=slo_ms, server=srv, devices={
        dev: DeviceState(info, thr, win, fresh and win is not None)
        for dev, (info, thr, win) in devices.items()})
