"""The wire codec: every message round-trips; anything else is a ProtocolError with a reason."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_testbed.common import protocol as wire

MESSAGES = [
    wire.Hello(device_id="low-001", tier="low", model="light-low", token="t"),
    wire.Infer(sample_id=7, dtype="uint8", shape=(64,), data=bytes(64), deadline_ms=250.0),
    wire.Report(window_s=0.5, generated=5, forwarded=2, answered=4, slo_met=3, slo_missed=1,
                fallback=0, threshold=0.8, mean_light_confidence=0.7, light_ms_mean=30.0,
                epoch=2),
    wire.Welcome(threshold=0.85, epoch=0, config={"slo_ms": 150.0}),
    wire.Result(sample_id=7, prediction=3, confidence=0.9, queue_us=10, compute_us=20,
                batch_size=4),
    wire.Threshold(value=0.5, epoch=3),
    wire.Error(code=int(wire.ErrorCode.MALFORMED), reason="nope", sample_id=None),
]


class TestRoundTrip:
    @pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
    def test_every_message_round_trips(self, msg: wire.Message) -> None:
        """decode(encode(m)) == m for every message type."""
        assert wire.decode(wire.encode(msg)) == msg

    def test_plain_client_map_is_accepted(self) -> None:
        """A hand-built msgpack map (what a plain HTTP client sends) decodes to Infer."""
        raw = msgpack.packb({"type": "infer", "sample_id": 1, "dtype": "float32",
                             "shape": [1, 64], "data": bytes(256)})
        msg = wire.decode(raw)
        assert isinstance(msg, wire.Infer) and msg.shape == (1, 64) and msg.deadline_ms == 0.0


class TestOkResults:
    @given(sample_id=st.integers(-(2**63), 2**64 - 1), prediction=st.integers(0, 2**31),
           confidence=st.floats(allow_nan=False, allow_infinity=False),
           queue_us=st.integers(-(2**63), 2**63 - 1), compute_us=st.integers(0, 2**40),
           batch_size=st.integers(1, 4096), model=st.text(max_size=40))
    @settings(max_examples=300, deadline=None)
    def test_same_bytes_as_encoding_a_result(self, sample_id: int, prediction: int,
                                             confidence: float, queue_us: int, compute_us: int,
                                             batch_size: int, model: str) -> None:
        """The batch encoder's bytes are exactly `encode(Result(...))`'s, so a device cannot
        tell which path answered it."""
        fast = wire.OkResults(compute_us, batch_size, model).encode(sample_id, prediction,
                                                                    confidence, queue_us)
        res = wire.Result(sample_id=sample_id, prediction=prediction, confidence=confidence,
                          queue_us=queue_us, compute_us=compute_us, batch_size=batch_size,
                          model=model)
        assert fast == wire.encode(res)
        assert wire.decode(fast) == res


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**21), st.floats(),
                   st.sampled_from(["uint8", "float32", "infer", "x"]), st.binary(max_size=8),
                   st.lists(st.one_of(st.integers(-1, 2**21), st.booleans(), st.floats()),
                            max_size=10))
_VALID = {"type": st.just("infer"), "sample_id": st.integers(-(2**63), 2**64 - 1),
          "dtype": st.sampled_from(["uint8", "float32", "int8"]),
          "shape": st.lists(st.integers(1, 2**21), max_size=8), "data": st.binary(max_size=8)}
_NEAR_INFERS = st.tuples(
    st.fixed_dictionaries(
        _VALID, optional={"deadline_ms": st.one_of(st.floats(), st.integers(-5, 10**6)),
                          "hold_ms": st.one_of(st.floats(-1, 4e6), st.integers(-1, 4 * 10**6),
                                               st.floats())}),
    st.dictionaries(st.sampled_from([*_VALID, "deadline_ms", "hold_ms", "extra"]), _VALUES,
                    max_size=2),
    st.sets(st.sampled_from(list(_VALID)), max_size=1),
    st.booleans())
"""Infer maps, most of them valid, some with a field of another type, missing or unknown."""


class TestInferFields:
    def test_a_device_infer_takes_the_fast_path(self) -> None:
        msg = wire.Infer(sample_id=7, dtype="uint8", shape=(8, 8), data=bytes(64),
                         deadline_ms=250.0)
        assert wire.infer_fields(wire.encode(msg)) == (7, "uint8", (8, 8), bytes(64), 250.0,
                                                       0.0)

    def test_an_infer_with_every_field_set_comes_back_whole(self) -> None:
        """The fast path and `Infer` agree: a device's infer with no field left at its default
        takes the fast path and yields every field, in `Infer`'s order. A field added to
        `Infer` fails here until the fast path reads it (it would otherwise be dropped, or
        send every request down the slow path)."""
        values: dict[str, object] = {"sample_id": 7, "dtype": "float32", "shape": (2, 8),
                                     "data": bytes(64), "deadline_ms": 250.0, "hold_ms": 12.5}
        names = [f.name for f in dataclasses.fields(wire.Infer)]
        assert sorted(values) == sorted(names), "a new Infer field: set it here"
        msg = wire.Infer(**values)  # type: ignore[arg-type]
        assert all(getattr(msg, f.name) != f.default for f in dataclasses.fields(wire.Infer))
        raw = wire.encode(msg)
        assert wire.decode(raw) == msg
        assert wire.infer_fields(raw) == tuple(getattr(msg, name) for name in names)

    @given(_NEAR_INFERS)
    @settings(max_examples=1000, deadline=None)
    def test_same_verdict_and_fields_as_decode(
            self, case: tuple[dict[str, object], dict[str, object], set[str], bool]) -> None:
        """Whatever the map, the fast path yields an infer's fields only when `decode` yields
        that infer, and does for every infer `decode` accepts."""
        body, changed, dropped, change = case
        if change:
            body = {k: v for k, v in {**body, **changed}.items() if k not in dropped}
        raw = msgpack.packb(body)
        fast = wire.infer_fields(raw)
        try:
            msg: wire.Message | None = wire.decode(raw)
        except wire.ProtocolError:
            msg = None
        if isinstance(msg, wire.Infer):
            assert fast == (msg.sample_id, msg.dtype, msg.shape, msg.data, msg.deadline_ms,
                            msg.hold_ms)
        else:
            assert fast is None


def _refused(raw: bytes, code: wire.ErrorCode) -> str:
    with pytest.raises(wire.ProtocolError) as err:
        wire.decode(raw)
    assert err.value.code == code
    assert err.value.reason
    return err.value.reason


class TestRefusals:
    def test_garbage_is_malformed(self) -> None:
        """Bytes that are not msgpack are refused as malformed."""
        _refused(b"\xc1\xc1\xc1", wire.ErrorCode.MALFORMED)

    def test_non_map_is_malformed(self) -> None:
        _refused(msgpack.packb([1, 2, 3]), wire.ErrorCode.MALFORMED)

    def test_unknown_type(self) -> None:
        reason = _refused(msgpack.packb({"type": "teleport"}), wire.ErrorCode.UNKNOWN_TYPE)
        assert "teleport" in reason

    def test_missing_field_is_named(self) -> None:
        reason = _refused(msgpack.packb({"type": "infer", "sample_id": 1}),
                          wire.ErrorCode.MALFORMED)
        assert "data" in reason and "shape" in reason

    def test_unknown_field_is_named(self) -> None:
        raw = msgpack.packb({"type": "threshold", "value": 0.5, "epoch": 1, "extra": 1})
        assert "extra" in _refused(raw, wire.ErrorCode.MALFORMED)

    def test_wrong_field_type(self) -> None:
        raw = msgpack.packb({"type": "threshold", "value": "high", "epoch": 1})
        assert "value" in _refused(raw, wire.ErrorCode.MALFORMED)

    def test_bool_is_not_an_int(self) -> None:
        raw = msgpack.packb({"type": "threshold", "value": 0.5, "epoch": True})
        _refused(raw, wire.ErrorCode.MALFORMED)

    def test_nan_is_refused(self) -> None:
        raw = msgpack.packb({"type": "threshold", "value": math.nan, "epoch": 1})
        assert "finite" in _refused(raw, wire.ErrorCode.MALFORMED)

    @pytest.mark.parametrize("raw", [
        msgpack.packb({"type": "threshold", "value": 1.5, "epoch": 1}),
        msgpack.packb({"type": "threshold", "value": -0.01, "epoch": 1}),
        msgpack.packb({"type": "welcome", "threshold": 2, "epoch": 0})])
    def test_a_threshold_outside_0_1_is_refused_not_clamped(self, raw: bytes) -> None:
        """A device uses the server's threshold as it comes (the server clamps it)."""
        assert "within 0 and 1" in _refused(raw, wire.ErrorCode.MALFORMED)

    @pytest.mark.parametrize("value", [0, 1, 0.0, 1.0])
    def test_a_threshold_may_be_either_bound(self, value: float) -> None:
        assert wire.decode(wire.encode(wire.Threshold(value, 1))) == wire.Threshold(value, 1)
        assert wire.decode(wire.encode(wire.Welcome(value, 0))) == wire.Welcome(value, 0)

    @pytest.mark.parametrize("hold", [-1.0, wire.MAX_HOLD_MS + 1, math.inf])
    def test_a_hold_is_a_duration_within_bounds(self, hold: float) -> None:
        for raw in (msgpack.packb({"type": "infer", "sample_id": 1, "dtype": "uint8",
                                   "shape": [64], "data": b"", "hold_ms": hold}),
                    wire.encode(wire.Report(window_s=0.5, generated=1, forwarded=0, answered=1,
                                            slo_met=1, slo_missed=0, fallback=0, threshold=0.8,
                                            mean_light_confidence=0.9, light_ms_mean=10.0,
                                            hold_ms=hold))):
            assert "hold_ms" in _refused(raw, wire.ErrorCode.MALFORMED)

    def test_a_hold_is_optional_and_kept(self) -> None:
        msg = wire.decode(wire.encode(wire.Infer(sample_id=1, dtype="uint8", shape=(64,),
                                                 data=bytes(64), hold_ms=12.5)))
        assert isinstance(msg, wire.Infer) and msg.hold_ms == 12.5
        assert len(wire.encode(dataclasses.replace(msg, hold_ms=0.0))) == len(
            wire.encode(msg))  # its size does not depend on its value: the device relies on it

    @pytest.mark.parametrize("shape", [[0], [-1, 64], [1] * 9, [2.5], [True], ["64"]])
    def test_bad_shapes(self, shape: list[object]) -> None:
        raw = msgpack.packb({"type": "infer", "sample_id": 1, "dtype": "uint8",
                             "shape": shape, "data": b""})
        _refused(raw, wire.ErrorCode.BAD_TENSOR)

    def test_oversized_message(self) -> None:
        raw = b"\x00" * (wire.MAX_MESSAGE_BYTES + 1)
        _refused(raw, wire.ErrorCode.TOO_LARGE)

    @pytest.mark.parametrize("device_id", ["", "x" * 200, "bad\nid"])
    def test_hello_ids_are_checked(self, device_id: str) -> None:
        raw = msgpack.packb({"type": "hello", "device_id": device_id, "tier": "low",
                             "model": "m"})
        _refused(raw, wire.ErrorCode.MALFORMED)


class TestFuzz:
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=512))
    def test_random_bytes_never_raise_anything_else(self, raw: bytes) -> None:
        """Any byte string decodes to a message or raises ProtocolError, nothing else."""
        with contextlib.suppress(wire.ProtocolError):
            wire.decode(raw)

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(["type", "sample_id", "dtype", "shape", "data",
                                            "deadline_ms", "value", "epoch", "device_id"]),
                           st.one_of(st.none(), st.booleans(),
                                     st.integers(-(2**63), 2**64 - 1), st.floats(),
                                     st.text(max_size=8), st.binary(max_size=8),
                                     st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)),
                           max_size=6))
    def test_random_maps_never_raise_anything_else(self, body: dict[str, object]) -> None:
        """Maps with plausible keys and wrong values are refused cleanly."""
        with contextlib.suppress(wire.ProtocolError):
            wire.decode(msgpack.packb(body))
