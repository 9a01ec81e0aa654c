"""Ingress validation of forwarded tensors against the heavy model's input."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_testbed.common import protocol as wire
from cascade_testbed.server.tensors import tensor_from_infer


class FakeModel:
    name = "fake"
    sample_shape = (64,)
    sample_size = 64


def infer(dtype: str = "uint8", shape: tuple[int, ...] = (64,), data: bytes | None = None
          ) -> wire.Infer:
    if data is None:
        data = bytes(int(np.prod(shape)) * np.dtype(dtype if dtype in ("uint8", "float32")
                                                     else "uint8").itemsize)
    return wire.Infer(sample_id=1, dtype=dtype, shape=shape, data=data)


def test_uint8_is_scaled() -> None:
    x = tensor_from_infer(infer(data=bytes([255] * 64)), FakeModel())  # type: ignore[arg-type]
    assert x.dtype == np.float32 and x.shape == (64,) and np.allclose(x, 1.0)


def test_float32_and_equivalent_shapes() -> None:
    data = np.arange(64, dtype=np.float32).tobytes()
    for shape in ((64,), (1, 64), (8, 8)):
        x = tensor_from_infer(infer("float32", shape, data), FakeModel())  # type: ignore[arg-type]
        assert x[5] == 5.0


@pytest.mark.parametrize("msg,needle", [
    (infer(dtype="float64"), "dtype"),
    (infer(shape=(65,), data=bytes(65)), "shape"),
    (infer(data=bytes(10)), "bytes"),
    (infer("float32", (64,), np.full(64, np.nan, np.float32).tobytes()), "NaN"),
])
def test_bad_tensors(msg: wire.Infer, needle: str) -> None:
    with pytest.raises(wire.ProtocolError) as err:
        tensor_from_infer(msg, FakeModel())  # type: ignore[arg-type]
    assert err.value.code == wire.ErrorCode.BAD_TENSOR and needle in err.value.reason


def test_close_reason_fits_a_close_frame() -> None:
    """Found by fuzzing: a long non-ASCII reason must not overflow the 125-byte close frame."""
    from cascade_testbed.server.ingress import _close_message

    for reason in ("ok", "é" * 200, "x" * 300, "\U0001f600" * 40):
        msg = _close_message(reason)
        assert len(msg) <= 123 and reason.startswith(msg.decode())


def test_samples_stay_wire_views_until_the_batch_is_built() -> None:
    from cascade_testbed.server.tensors import model_input, sample_from_infer

    pixels = bytes(range(64))
    view = sample_from_infer(infer(data=pixels), FakeModel())  # type: ignore[arg-type]
    assert view.dtype == np.uint8 and not view.flags.writeable  # no copy of the wire bytes
    floats = np.linspace(0, 1, 64, dtype=np.float32)
    fview = sample_from_infer(infer("float32", (8, 8), floats.tobytes()),
                              FakeModel())  # type: ignore[arg-type]
    expected = np.arange(64, dtype=np.float32) / 255
    for batch in ([view, view], [fview, fview], [view, fview]):
        x = model_input(batch)
        assert x.dtype == np.float32 and x.shape == (2, 64)
    assert np.allclose(model_input([view, view])[1], expected)
    assert np.array_equal(model_input([fview, fview])[0], floats)
    mixed = model_input([view, fview])
    assert np.allclose(mixed[0], expected) and np.array_equal(mixed[1], floats)
