"""The wire format shared by devices, server and plain HTTP clients (msgpack maps, versioned).

A leaf module: it imports only the standard library and msgpack, so devices and server can both
depend on it without depending on each other. `decode` is a pure bytes -> message function that
either returns a valid message or raises `ProtocolError`; it never raises anything else.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, Final

import msgpack

from cascade_testbed.common.names import BadName, check_name, shown

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 1 << 20
"""Largest frame a peer may send; the server refuses bigger ones before decoding."""

ALLOWED_DTYPES: Final = frozenset({"float32", "uint8"})
MAX_RATE_SPS: Final = 1_000_000.0
"""Largest rate a device may declare in its hello."""
MAX_HOLD_MS: Final = 3_600_000.0
"""Longest a receiver holds a message for its emulated link (`hold_ms`): an hour-long cut."""


class ErrorCode(IntEnum):
    """Refusals that cross the wire; HTTP maps them to statuses in `HTTP_STATUS`."""

    MALFORMED = 1
    UNKNOWN_TYPE = 2
    BAD_VERSION = 3
    BAD_TENSOR = 4
    TOO_LARGE = 5
    NOT_REGISTERED = 6
    UNAUTHORIZED = 7
    DUPLICATE_DEVICE = 8
    OVERLOADED = 9
    INTERNAL = 10
    RATE_LIMITED = 11
    """The device sent more than its budget (its declared rate with headroom, or its fair
    share of a saturated server): this sample is not queued; the device answers it itself."""


HTTP_STATUS: Final = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.BAD_VERSION: 400,
    ErrorCode.BAD_TENSOR: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NOT_REGISTERED: 409,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DUPLICATE_DEVICE: 409,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.RATE_LIMITED: 429,
}


class ProtocolError(ValueError):
    """A message that cannot be decoded or is not valid; `code` says which refusal to send."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- device -> server -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    device_id: str
    tier: str
    model: str
    token: str = ""
    version: int = PROTOCOL_VERSION
    rate_sps: float = 0.0
    """The most samples per second the device will generate (its arrival schedule's peak):
    the server admits its requests within this with headroom (docs/security.md, "Fair
    sharing"). 0: not declared, and the server's default budget applies."""
    TYPE = "hello"


@dataclass(frozen=True, slots=True)
class Infer:
    """One forwarded sample. `deadline_ms` is a budget relative to receipt, not a timestamp,
    because device and server clocks are never compared."""

    sample_id: int
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    deadline_ms: float = 0.0
    hold_ms: float = 0.0
    """The rest of the sample's time on the device's emulated uplink: the server acts on it
    this long after receipt (the deadline counts from then). The device's link model (delay,
    bandwidth, loss, cuts) says when a message arrives; the device sends at once instead of
    waking up again to send at that time (a float: its size does not depend on its value)."""
    TYPE = "infer"


@dataclass(frozen=True, slots=True)
class Report:
    """A device's statistics over its last window, the input of the server's scheduler."""

    window_s: float
    generated: int
    forwarded: int
    answered: int
    slo_met: int
    slo_missed: int
    fallback: int
    threshold: float
    mean_light_confidence: float
    light_ms_mean: float
    epoch: int = 0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    """End-to-end latency of the device's last answers (0: none yet); optional, for live views
    (`testbed watch`), never read by a policy."""
    hold_ms: float = 0.0
    """As `Infer.hold_ms`: the scheduler reads the report when the emulated uplink delivers it."""
    TYPE = "report"


# --- server -> device -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    threshold: float
    epoch: int
    config: dict[str, Any] = field(default_factory=dict)
    TYPE = "welcome"


class ResultStatus(IntEnum):
    OK = 0
    REJECTED = 1
    """Refused at admission (queue full): the device keeps its light answer."""
    EXPIRED = 2
    """The deadline passed while queued: answered at once from a timer, not when a slot freed."""
    FAILED = 3
    """The heavy model raised; the device keeps its light answer."""


@dataclass(frozen=True, slots=True)
class Result:
    sample_id: int
    status: int = ResultStatus.OK
    prediction: int = -1
    confidence: float = 0.0
    queue_us: int = 0
    compute_us: int = 0
    batch_size: int = 0
    reason: str = ""
    cause: str = ""
    """Why a sample was not run, as a short code ("queue_full", "admission", "deadline",
    "shutdown", "model_error"); `reason` says it for people."""
    model: str = ""
    """The heavy model that answered (the server may switch between several)."""
    TYPE = "result"


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    epoch: int
    TYPE = "threshold"


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    reason: str
    sample_id: int | None = None
    TYPE = "error"


Message = Hello | Infer | Report | Welcome | Result | Threshold | Error
_TYPES: Final[dict[str, type]] = {
    cls.TYPE: cls for cls in (Hello, Infer, Report, Welcome, Result, Threshold, Error)
}

# Field -> accepted Python types after msgpack decoding; checked in `decode`.
_NUM = (int, float)
_SCHEMA: Final[dict[type, dict[str, tuple[type, ...]]]] = {
    Hello: {"device_id": (str,), "tier": (str,), "model": (str,), "token": (str,),
            "version": (int,), "rate_sps": _NUM},
    Infer: {"sample_id": (int,), "dtype": (str,), "shape": (list, tuple), "data": (bytes,),
            "deadline_ms": _NUM, "hold_ms": _NUM},
    Report: {"window_s": _NUM, "generated": (int,), "forwarded": (int,), "answered": (int,),
             "slo_met": (int,), "slo_missed": (int,), "fallback": (int,), "threshold": _NUM,
             "mean_light_confidence": _NUM, "light_ms_mean": _NUM, "epoch": (int,),
             "latency_p50_ms": _NUM, "latency_p95_ms": _NUM, "hold_ms": _NUM},
    Welcome: {"threshold": _NUM, "epoch": (int,), "config": (dict,)},
    Result: {"sample_id": (int,), "status": (int,), "prediction": (int,), "confidence": _NUM,
             "queue_us": (int,), "compute_us": (int,), "batch_size": (int,), "reason": (str,),
             "cause": (str,), "model": (str,)},
    Threshold: {"value": _NUM, "epoch": (int,)},
    Error: {"code": (int,), "reason": (str,), "sample_id": (int, type(None))},
}
_REQUIRED: Final[dict[type, frozenset[str]]] = {
    Hello: frozenset({"device_id", "tier", "model"}),
    Infer: frozenset({"sample_id", "dtype", "shape", "data"}),
    Report: frozenset(_SCHEMA[Report]) - {"epoch", "latency_p50_ms", "latency_p95_ms",
                                          "hold_ms"},
    Welcome: frozenset({"threshold", "epoch"}),
    Result: frozenset({"sample_id"}),
    Threshold: frozenset({"value", "epoch"}),
    Error: frozenset({"code", "reason"}),
}
_THRESHOLDS: Final[dict[type, str]] = {Welcome: "threshold", Threshold: "value"}
"""Messages that set a device's forwarding threshold, and its field: within [0, 1] (the server
clamps what its policy decides), so a device can use the value as it comes."""
MAX_TOKEN_LEN: Final = 512
MAX_DIMS: Final = 8


_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _TYPES.values()
}


def encode(msg: Message) -> bytes:
    """Pack a message as a msgpack map with its `type` key. Fields are read one level deep
    (`dataclasses.asdict` deep-copies and was a fifth of the server's time per request)."""
    body = {name: getattr(msg, name) for name in _FIELDS[type(msg)]}
    body["type"] = msg.TYPE
    if isinstance(msg, Infer):
        body["shape"] = list(msg.shape)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


_pack = msgpack.Packer(use_bin_type=True).pack


class OkResults:
    """Encodes the `ok` results of one batch to exactly the bytes `encode(Result(...))` gives.

    The server answers thousands of results a second that differ only in four fields; building
    a frozen `Result` and its dict per reply cost ~4 us, a fifth of an aiohttp echo's whole
    round trip. The fields shared by the batch are packed once (those shared by every batch of
    a size and model, once per process), and a reply packs only its own four values between
    them (a msgpack map is its header followed by key, value pairs, in `Result`'s field order).
    """

    __slots__ = ("_tail",)

    def __init__(self, compute_us: int, batch_size: int, model: str) -> None:
        self._tail = _pack("compute_us") + _pack(compute_us) + _ok_tail(batch_size, model)

    def encode(self, sample_id: int, prediction: int, confidence: float, queue_us: int) -> bytes:
        return b"".join((_OK_HEAD, _pack(sample_id), _OK_STATUS_PREDICTION, _pack(prediction),
                         _OK_CONFIDENCE, _pack(confidence), _OK_QUEUE, _pack(queue_us),
                         self._tail))


_RESULT_KEYS: Final = (*_FIELDS[Result], "type")
if _RESULT_KEYS[:6] != ("sample_id", "status", "prediction", "confidence", "queue_us",
                        "compute_us"):
    raise AssertionError("Result's field order changed: update OkResults")
_OK_HEAD: Final = msgpack.Packer().pack_map_header(len(_RESULT_KEYS)) + _pack("sample_id")
_OK_STATUS_PREDICTION: Final = _pack("status") + _pack(int(ResultStatus.OK)) + _pack("prediction")
_OK_CONFIDENCE: Final = _pack("confidence")
_OK_QUEUE: Final = _pack("queue_us")


@functools.lru_cache(maxsize=1024)
def _ok_tail(batch_size: int, model: str) -> bytes:
    """The packed fields after `compute_us` of an `ok` result: its batch size, model, type."""
    shared = Result(sample_id=0, batch_size=batch_size, model=model)
    return b"".join(_pack(k) + _pack(getattr(shared, k) if k != "type" else Result.TYPE)
                    for k in _RESULT_KEYS[6:])


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Unpack and validate one message; raise `ProtocolError` with a reason on anything else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE_BYTES)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise ProtocolError(ErrorCode.MALFORMED, f"not valid msgpack: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "message must be a msgpack map")
    kind = body.pop("type", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown(kind)}")
    schema = _SCHEMA[cls]
    keys = body.keys()
    if not keys <= schema.keys():  # set differences only on the error path: this one is hot
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"{kind}: unknown fields "
                            f"{shown(sorted(map(str, keys - schema.keys())))}")
    if not keys >= _REQUIRED[cls]:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"{kind}: missing fields {sorted(_REQUIRED[cls] - keys)}")
    for name, value in body.items():
        kind_of = type(value)
        if kind_of is bool or not isinstance(value, schema[name]):
            raise ProtocolError(ErrorCode.MALFORMED, f"{kind}.{name} has type {kind_of.__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(ErrorCode.MALFORMED, f"{kind}.{name} is not finite")
    if not 0 <= body.get("hold_ms", 0) <= MAX_HOLD_MS:
        raise ProtocolError(ErrorCode.MALFORMED, f"{kind}.hold_ms must be within 0 and "
                                                 f"{MAX_HOLD_MS:.0f}")
    if cls is Infer:
        body["shape"] = _check_shape(body["shape"])
    elif cls is Hello:
        _check_hello(body)
    elif cls in _THRESHOLDS and not 0 <= body[_THRESHOLDS[cls]] <= 1:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"{kind}.{_THRESHOLDS[cls]} must be within 0 and 1")
    return cls(**body)  # type: ignore[no-any-return]


InferFields = tuple[int, str, tuple[int, ...], bytes, float, float]
"""An `infer`'s sample id, dtype, shape, data, deadline budget and hold (ms), in that order."""
_INFER_KEYS: Final = len(_FIELDS[Infer]) + 1
"""Keys of an `infer` map with every field, as `encode` sends it: `Infer`'s fields and `type`.
Counted from `Infer`: a count written here would refuse maps once a field is added there and
send every device's request down the slow path without a word (a test of the fast path then
fails until `infer_fields` returns the new field too)."""


def infer_fields(data: bytes | bytearray | memoryview) -> InferFields | None:
    """The fields of a plainly valid `infer` (what devices send all the time), else None.

    Exactly the `infer` messages `decode` accepts, with the same values; None for anything
    else, valid or not, which `decode` then decodes or refuses with its reason. It checks
    the same things as `decode` but only the ones an `infer` needs and without building the
    message (`decode`'s general checks were ~3 us of the server's time per request)."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE_BYTES)
    except Exception:  # msgpack raises many unrelated types on garbage
        return None
    if type(body) is not dict or body.get("type") != "infer":
        return None
    deadline, hold = body.get("deadline_ms", 0.0), body.get("hold_ms", 0.0)
    if len(body) != _INFER_KEYS - ("deadline_ms" not in body) - ("hold_ms" not in body):
        return None  # a field missing (seen below) or unknown
    sample_id, dtype, shape, payload = (body.get("sample_id"), body.get("dtype"),
                                        body.get("shape"), body.get("data"))
    # msgpack yields exact types: `type(x) is int` is decode's "an int, not a bool".
    if type(sample_id) is not int or type(dtype) is not str or type(payload) is not bytes \
            or type(shape) is not list or len(shape) > MAX_DIMS:
        return None
    for number in (deadline, hold):
        if type(number) is float:
            if not math.isfinite(number):
                return None
        elif type(number) is not int:
            return None
    if not 0 <= hold <= MAX_HOLD_MS:
        return None
    for d in shape:
        if type(d) is not int or not 0 < d <= MAX_MESSAGE_BYTES:
            return None
    return sample_id, dtype, tuple(shape), payload, deadline, hold


def _check_shape(shape: list[Any]) -> tuple[int, ...]:
    if len(shape) > MAX_DIMS or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_MESSAGE_BYTES
        for d in shape
    ):
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"invalid shape {shown(shape)}")
    return tuple(shape)


def _check_hello(body: dict[str, Any]) -> None:
    """Ids, tier and model become metric labels, log fields and (on devices) file names."""
    for name in ("device_id", "tier", "model"):
        try:
            check_name(body[name], f"hello.{name}")
        except BadName as exc:
            raise ProtocolError(ErrorCode.MALFORMED, str(exc)) from None
    if len(body.get("token", "")) > MAX_TOKEN_LEN:
        raise ProtocolError(ErrorCode.MALFORMED, f"hello.token longer than {MAX_TOKEN_LEN}")
    if not 0 <= body.get("rate_sps", 0.0) <= MAX_RATE_SPS:
        raise ProtocolError(ErrorCode.MALFORMED, f"hello.rate_sps must be within 0 and "
                                                 f"{MAX_RATE_SPS:.0f}")
