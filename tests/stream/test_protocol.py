"""The wire protocol on its own: round trips, zero copy, and refusal of everything malformed."""

import json

import numpy as np
import pytest

from ns_bluesky.stream.protocol import MAX_HEADER_BYTES, Message, ProtocolError, decode, encode


def test_round_trip_keeps_arrays_and_fields():
    raw = np.arange(1040 * 1152, dtype=np.uint16).reshape(1040, 1152)
    msg = Message("frame", run="r1", seq=7, meta={"exposure_s": 0.1}, arrays={"raw": raw, "mask": np.ones((4, 4), bool)})
    back = decode(encode(msg))
    assert (back.kind, back.run, back.seq, back.meta["exposure_s"]) == ("frame", "r1", 7, 0.1)
    np.testing.assert_array_equal(back.arrays["raw"], raw)
    assert back.arrays["mask"].dtype == bool


def test_send_side_does_not_copy_large_buffers():
    raw = np.zeros((1040, 1152), np.uint16)
    frames = encode(Message("frame", run="r", seq=0, arrays={"raw": raw}))
    assert isinstance(frames[1], memoryview) and np.shares_memory(np.frombuffer(frames[1], np.uint16), raw)


def test_receive_side_is_a_view_of_the_received_buffer():
    buf = bytearray(np.arange(16, dtype="<f4").tobytes())
    header = json.dumps({"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<f4", "shape": [4, 4]}]}).encode()
    arr = decode([header, buf]).arrays["a"]
    buf[0:4] = np.float32(42).tobytes()
    assert arr[0, 0] == 42  # no copy was made


def test_object_arrays_are_refused_on_send():
    with pytest.raises(ProtocolError, match="bad-dtype"):
        encode(Message("frame", run="r", seq=0, arrays={"x": np.array([{}], dtype=object)}))


def test_meta_cannot_override_the_header():
    with pytest.raises(ProtocolError, match="bad-field"):
        encode(Message("frame", run="r", seq=0, meta={"kind": "stop"}))


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "empty"),
        ([b"\xff\xfe"], "bad-json"),
        ([b"x" * (MAX_HEADER_BYTES + 1)], "huge-header"),
        ([b'{"v": 1, "kind": "frame", "run": "r", "seq": true, "arrays": []}'], "bad-field"),
        ([b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [{"name": "a", "dtype": "<u2", "shape": [100000, 100000]}]}', b""], "huge-array"),
        ([b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": "nope"}'], "bad-array-spec"),
    ],
)
def test_malformed_is_a_protocol_error_with_a_reason(frames, reason):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.reason == reason


def test_a_big_scans_start_document_travels_with_its_positions_as_arrays():
    from ns_bluesky.stream.protocol import start_document, start_message

    planned = np.random.default_rng(0).normal(size=(40 * 40, 2)) * 1e-6
    doc = {"uid": "u1", "purpose": "ptychography", "planned_positions_m": planned.tolist(), "motors": ["y", "x"]}
    frames = encode(start_message(doc))
    assert len(bytes(frames[0])) < 4096  # 60 kB of positions would not fit a header
    back = start_document(decode(frames))
    np.testing.assert_array_equal(back["planned_positions_m"], planned)
    assert back["motors"] == ["y", "x"] and back["uid"] == "u1"
