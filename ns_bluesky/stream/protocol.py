"""Wire protocol: a JSON header frame, then one raw buffer frame per array.

Nothing received is ever unpickled: the header is JSON (size-capped), arrays are
plain buffers of a whitelisted dtype whose byte count must equal dtype x shape.
Large buffers travel zero-copy both ways (``copy=False`` on send, ``np.frombuffer``
over the received ``zmq.Frame`` on receive). Every check that fails raises
:class:`ProtocolError` with a short ``reason`` that the receiver counts and logs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAY_BYTES = 256 * 1024 * 1024
MAX_ARRAYS = 256  # arrays in one message
MAX_NAME_CHARS = 1024  # a run id or a stage name
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # sequence numbers and item ids: what every end can store and send back

#: data kinds flow ingest -> handler -> workers -> results; the rest is between the parts
DATA_KINDS = frozenset({"start", "frame", "event", "stop", "result"})
WORKER_KINDS = frozenset({"ready", "heartbeat", "work", "error", "control", "done"})
CLIENT_KINDS = frozenset({"ack", "nack", "command", "reply", "end_of_run", "status"})
KINDS = DATA_KINDS | WORKER_KINDS | CLIENT_KINDS

#: dtypes that may cross the wire; never object or void
DTYPES = frozenset(
    {"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8", "<c8", "<c16", "|b1"}
)

#: header fields every message of a kind must carry (besides v and kind)
REQUIRED = {
    "start": ("run",),
    "frame": ("run", "seq"),
    "event": ("run", "seq"),
    "stop": ("run",),
    "result": ("run", "seq", "stage"),
    "work": ("item",),
    "done": ("item",),
    "error": ("item",),
    "ready": ("module", "credits"),
    "command": ("command",),
}


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``reason`` is a short, countable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Message:
    """One protocol message: header fields plus named arrays."""

    kind: str
    run: str = ""
    seq: int = -1
    stage: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str]:
        """What downstream must see exactly once."""
        return self.run, self.seq, self.stage


def encode(msg: Message, place: Callable[[np.ndarray], int | None] | None = None) -> list:
    """Frames to send with ``send_multipart(frames, copy=False)``: header, then buffers.

    ``place`` (handler and local workers only) may put an array into shared memory
    and return its offset there; such an array travels as that offset alone.
    """
    if msg.kind not in KINDS:
        raise ProtocolError("unknown-kind", msg.kind)
    specs, buffers = [], []
    for name, arr in msg.arrays.items():
        a = np.ascontiguousarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt.str not in DTYPES:
            raise ProtocolError("bad-dtype", f"{name}: {a.dtype}")
        a = a.astype(dt, copy=False)
        spec = {"name": name, "dtype": dt.str, "shape": list(a.shape)}
        offset = place(a) if place is not None else None
        if offset is None:
            buffers.append(memoryview(a).cast("B") if a.nbytes else b"")
        else:
            spec["shm"] = offset
        specs.append(spec)
    clash = set(msg.meta) & set(_HEADER_FIELDS)
    if clash:
        raise ProtocolError("bad-field", f"meta may not set {sorted(clash)}")
    header = {"v": VERSION, "kind": msg.kind, "run": msg.run, "seq": msg.seq, "stage": msg.stage, "arrays": specs}
    header.update(msg.meta)
    try:
        text = orjson.dumps(header, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from None
    return [text, *buffers]


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_HEADER_FIELDS = ("v", "kind", "run", "seq", "stage", "arrays")


def _buffer(frame) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame (zero-copy) or bytes
    return memoryview(buf)


def decode(frames: list, shm: memoryview | None = None) -> Message:
    """Validate and unpack received frames; raises :class:`ProtocolError`, never anything else.

    ``shm`` is the shared-memory segment that arrays sent by offset point into; without
    it (every port a remote peer can reach) such a message is refused.
    """
    try:
        return _decode(frames, shm)
    except ProtocolError:
        raise
    except Exception as exc:  # a check we did not foresee: still a counted, answered protocol error
        raise ProtocolError("bad-message", f"{type(exc).__name__}: {exc}"[:120]) from None


def _decode(frames: list, shm: memoryview | None) -> Message:
    if not frames:
        raise ProtocolError("empty")
    raw = _buffer(frames[0])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("huge-header", f"{raw.nbytes} bytes > {MAX_HEADER_BYTES}")
    try:
        header = orjson.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad-json", str(exc)[:80]) from None
    if not isinstance(header, dict):
        raise ProtocolError("bad-header", "header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError("bad-version", f"{header.get('v')!r} (this end speaks {VERSION})")
    kind = header.get("kind")
    if kind not in KINDS:
        raise ProtocolError("unknown-kind", repr(kind)[:40])
    missing = [f for f in REQUIRED.get(kind, ()) if f not in header or header[f] in (None, "")]
    if missing:
        raise ProtocolError("missing-field", f"{kind} needs {', '.join(missing)}")
    run, seq, stage = header.get("run", ""), header.get("seq", -1), header.get("stage", "")
    if not isinstance(run, str) or not isinstance(stage, str):
        raise ProtocolError("bad-field", "run and stage must be strings")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ProtocolError("bad-field", f"seq must be an integer, got {seq!r}"[:80])
    if not INT64_MIN <= seq <= INT64_MAX:
        raise ProtocolError("out-of-range", f"seq {seq} is outside 64 bits"[:80])
    if len(run) > MAX_NAME_CHARS or len(stage) > MAX_NAME_CHARS:
        raise ProtocolError("out-of-range", f"run and stage are at most {MAX_NAME_CHARS} characters")
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError("bad-array-spec", "arrays must be a list")
    if len(specs) > MAX_ARRAYS:
        raise ProtocolError("out-of-range", f"{len(specs)} arrays, at most {MAX_ARRAYS}")
    inline = [s for s in specs if not (isinstance(s, dict) and "shm" in s)]
    if len(inline) != len(frames) - 1:
        raise ProtocolError("buffer-count", f"header lists {len(inline)} inline arrays, {len(frames) - 1} buffers came")
    if len(inline) != len(specs) and shm is None:
        raise ProtocolError("shm-not-allowed", "arrays by shared-memory offset are accepted from local workers only")
    arrays = {}
    buffers = iter(frames[1:])
    for spec in specs:
        name = _spec_name(spec)
        if name in arrays:  # the second would silently replace the first
            raise ProtocolError("duplicate-array", f"two arrays named {name!r}"[:80])
        arrays[name] = _shm_array(spec, shm) if "shm" in spec else _array(spec, next(buffers))
    meta = {k: v for k, v in header.items() if k not in _HEADER_FIELDS}
    return Message(kind=kind, run=run, seq=seq, stage=stage, meta=meta, arrays=arrays)


def _spec_name(spec) -> str:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError("bad-array-spec", "each array needs a name, a dtype and a shape")
    return spec["name"]


def _shm_array(spec: dict, shm: memoryview) -> np.ndarray:
    offset = spec["shm"]
    expected = _expected_bytes(spec)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + expected > shm.nbytes:
        raise ProtocolError("bad-shm-offset", f"{spec['name']}: {offset!r} + {expected} outside {shm.nbytes} bytes")
    arr = np.frombuffer(shm, dtype=spec["dtype"], count=math.prod(spec["shape"]), offset=offset).reshape(spec["shape"])
    arr.flags.writeable = False
    return arr


def _expected_bytes(spec: dict) -> int:
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if dtype not in DTYPES:
        raise ProtocolError("bad-dtype", repr(dtype)[:40])
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError("bad-shape", repr(shape)[:60])
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if expected > MAX_ARRAY_BYTES:
        raise ProtocolError("huge-array", f"{expected} bytes")
    return expected


def _array(spec: dict, frame) -> np.ndarray:
    expected = _expected_bytes(spec)
    buf = _buffer(frame)
    if buf.nbytes != expected:
        raise ProtocolError("size-mismatch", f"{spec['name']}: {buf.nbytes} bytes for {spec['dtype']} {spec['shape']} ({expected})")
    return np.frombuffer(buf, dtype=spec["dtype"]).reshape(spec["shape"])


def jsonable(doc: dict) -> dict:
    """A document as plain JSON types (numpy values to lists, anything else to its text)."""
    return json.loads(json.dumps(doc, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


#: numeric lists in a start document longer than this travel as arrays, not in the header
#: (a 40 x 40 scan's planned positions alone are 60 kB of JSON)
START_ARRAY_ITEMS = 256


def start_message(doc: dict) -> Message:
    """The ``start`` message of a run: its document in the header, long numeric lists as arrays."""
    doc = jsonable(doc)
    arrays = {}
    for key, value in list(doc.items()):
        if isinstance(value, list) and len(value) > START_ARRAY_ITEMS:
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                continue
            arrays[f"start.{key}"] = arr
            del doc[key]
    return Message("start", run=str(doc["uid"]), meta={"start": doc, "start_arrays": [k[6:] for k in arrays]}, arrays=arrays)


def start_document(msg: Message) -> dict:
    """The start document a ``start`` message carries, its arrays put back (as numpy arrays).

    A simple sender may put the document's keys straight into ``meta``: that is read too.
    """
    doc = msg.meta.get("start")
    doc = dict(doc) if isinstance(doc, dict) else dict(msg.meta)
    for key in msg.meta.get("start_arrays") or []:
        if isinstance(key, str) and f"start.{key}" in msg.arrays:
            doc[key] = msg.arrays[f"start.{key}"]
    return doc
