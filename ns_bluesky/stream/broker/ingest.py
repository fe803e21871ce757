"""The ingest port's side: decode each data message, refuse a bad one with its reason, acknowledge the rest.

Every message that arrives is answered: a ``nack`` at once for a malformed one (with
its key, where the header reads that far, so the sender stops resending it), and one
``ack`` per client per poll round listing every message it covers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable

from ..config import INGEST_KINDS
from ..protocol import INT64_MAX, INT64_MIN, MAX_NAME_CHARS, Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)

MAX_CLIENTS = 64  # ingest clients whose lag the status lists


class Ingest:
    """``send(frames)`` answers a client (its identity first); ``accept(msg)`` takes a decoded message, or refuses
    it by raising :class:`ProtocolError` (answered with a nack like a malformed one)."""

    def __init__(self, send: Callable[[list], None], accept: Callable[[Message], None], malformed: Counter, counts: Counter):
        self.send, self.accept, self.malformed, self.counts = send, accept, malformed, counts
        self.acks: dict[bytes, list] = {}  # client identity -> keys received since the last flush
        self.client_lag: dict[str, int] = {}  # what each ingest client last said it still holds

    def receive(self, frames: list) -> None:
        identity, payload = bytes(frames[0]), frames[1:]
        try:
            msg = decode(payload)
            if msg.kind not in INGEST_KINDS:
                raise ProtocolError("wrong-port", f"{msg.kind} does not belong on the ingest port")
            self.accept(msg)  # may refuse it too (too many runs, an expired run, a number out of range)
        except ProtocolError as exc:
            self.malformed[exc.reason] += 1
            log.warning("malformed message on ingest (%s)", exc)
            meta = {"reason": exc.reason, "detail": exc.detail[:200]}
            key = best_effort_key(payload[0]) if payload else None
            if key is not None:
                meta["key"] = key  # so the sender can stop resending it
            self.send([identity, *encode(Message("nack", meta=meta))])
            return
        self.counts["ingested"] += 1
        self.acks.setdefault(identity, []).append([msg.kind, msg.run, msg.seq])
        lag = msg.meta.get("lag")
        if isinstance(lag, int) and not isinstance(lag, bool) and 0 <= lag <= INT64_MAX:
            self.client_lag.pop(identity.hex(), None)
            self.client_lag[identity.hex()] = lag
            while len(self.client_lag) > MAX_CLIENTS:  # clients come and go: the oldest is forgotten
                del self.client_lag[next(iter(self.client_lag))]

    def flush(self) -> None:
        """One acknowledgement per client per poll round, listing every message it covers."""
        for identity, keys in self.acks.items():
            self.send([identity, *encode(Message("ack", meta={"keys": keys}))])
        self.acks.clear()


def best_effort_key(header_frame) -> list | None:
    """[kind, run, seq] of a refused message, if its header parses that far."""
    try:
        h = json.loads(bytes(getattr(header_frame, "buffer", header_frame))[:65536])
        key = [h["kind"], h.get("run", ""), h.get("seq", -1)]
        if not all(isinstance(v, t) for v, t in zip(key, (str, str, int), strict=True)) or isinstance(key[2], bool):
            return None
        # only a key the nack can carry back (a seq outside 64 bits cannot be sent, so it is answered without one)
        return key if INT64_MIN <= key[2] <= INT64_MAX and len(key[0]) + len(key[1]) <= 2 * MAX_NAME_CHARS else None
    except Exception:
        return None
