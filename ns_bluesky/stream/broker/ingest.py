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
from ..protocol import Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)


class Ingest:
    """``send(frames)`` answers a client (its identity first); ``accept(msg)`` takes a decoded message."""

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
        self.accept(msg)
        self.acks.setdefault(identity, []).append([msg.kind, msg.run, msg.seq])
        if "lag" in msg.meta:
            self.client_lag[identity.hex()] = msg.meta["lag"]

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
        return key if all(isinstance(v, t) for v, t in zip(key, (str, str, int), strict=True)) else None
    except Exception:
        return None
