"""Ingest alone: decode, refuse with a reason (and the key where it reads), acknowledge per client per round."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ns_bluesky.stream.broker.ingest import Ingest, best_effort_key
from ns_bluesky.stream.protocol import Message, decode, encode


def make():
    sent, accepted = [], []
    ing = Ingest(sent.append, accepted.append, Counter(), Counter())
    return ing, sent, accepted


def replies(sent):
    return [(frames[0], decode(frames[1:])) for frames in sent]


def test_good_messages_are_accepted_and_acknowledged_together_per_client():
    ing, sent, accepted = make()
    ing.receive([b"A", *encode(Message("start", run="r"))])
    ing.receive([b"B", *encode(Message("frame", run="r", seq=1, arrays={"x": np.ones(3)}))])
    ing.receive([b"A", *encode(Message("frame", run="r", seq=2, meta={"lag": 7}))])
    assert [(m.kind, m.seq) for m in accepted] == [("start", -1), ("frame", 1), ("frame", 2)]
    assert sent == [] and ing.counts["ingested"] == 3
    ing.flush()
    assert [(who, m.kind, m.meta["keys"]) for who, m in replies(sent)] == [
        (b"A", "ack", [["start", "r", -1], ["frame", "r", 2]]),
        (b"B", "ack", [["frame", "r", 1]]),
    ]
    assert ing.client_lag == {b"A".hex(): 7}
    ing.flush()
    assert len(sent) == 2  # nothing new, nothing sent


def test_a_malformed_message_is_counted_and_refused_at_once_with_its_key():
    ing, sent, accepted = make()
    ing.receive([b"A", b'{"v": 1, "kind": "frame", "run": "r", "seq": "one", "arrays": []}'])
    ing.receive([b"A", b'{"v": 1, "kind": "frame", "run": "r", "seq": 3, "arrays": []}', b"extra"])
    ing.receive([b"B", *encode(Message("result", run="r", seq=1, stage="s"))])
    ing.receive([b"C"])
    assert accepted == [] and ing.counts["ingested"] == 0
    got = replies(sent)
    assert [(who, m.kind, m.meta["reason"]) for who, m in got] == [
        (b"A", "nack", "bad-field"), (b"A", "nack", "buffer-count"), (b"B", "nack", "wrong-port"), (b"C", "nack", got[3][1].meta["reason"]),
    ]
    assert "key" not in got[0][1].meta  # a seq that is not a number gives no key
    assert got[1][1].meta["key"] == ["frame", "r", 3] and got[2][1].meta["key"] == ["result", "r", 1]
    assert sum(ing.malformed.values()) == 4 and ing.malformed["wrong-port"] == 1
    ing.flush()
    assert len(sent) == 4  # a refused message is not acknowledged as well


def test_the_key_is_read_only_as_far_as_the_header_parses():
    assert best_effort_key(b'{"kind": "frame", "run": "r", "seq": 4}') == ["frame", "r", 4]
    assert best_effort_key(b'{"kind": "stop"}') == ["stop", "", -1]
    for bad in (b"{not json", b"[1, 2]", b'{"kind": 5}', b'{"kind": "f", "seq": 1.5}'):
        assert best_effort_key(bad) is None


def test_out_of_range_numbers_and_duplicate_names_are_answered_with_a_nack():
    """A seq outside 64 bits (once never answered: its key could not be sent back), two arrays of one name."""
    ing, sent, accepted = make()
    for seq in (2**63, -(2**63) - 1, 2**64, 10**30):
        ing.receive([b"A", b'{"v": 1, "kind": "frame", "run": "r", "seq": %d, "arrays": []}' % seq])
    spec = b'{"name": "raw", "dtype": "|u1", "shape": [2]}'
    ing.receive([b"A", b'{"v": 1, "kind": "frame", "run": "r", "seq": 1, "arrays": [%s, %s]}' % (spec, spec), b"ab", b"cd"])
    ing.receive([b"A", b'{"v": 1, "kind": "frame", "run": "%s", "seq": 1, "arrays": []}' % (b"r" * 5000)])
    got = [m for _, m in replies(sent)]
    assert [m.kind for m in got] == ["nack"] * 6 and accepted == []
    assert [m.meta["reason"] for m in got] == ["out-of-range", "bad-field", "bad-field", "bad-field", "duplicate-array", "out-of-range"]
    assert all("key" not in m.meta for m in got[:4])
    assert got[4].meta["key"] == ["frame", "r", 1]


def test_a_refusal_by_the_run_book_is_a_nack_with_the_key():
    from ns_bluesky.stream.protocol import ProtocolError

    def refuse(msg):
        raise ProtocolError("too-many-runs", "64 runs are open")

    sent = []
    ing = Ingest(sent.append, refuse, Counter(), Counter())
    ing.receive([b"A", *encode(Message("frame", run="r", seq=7))])
    (reply,) = [m for _, m in replies(sent)]
    assert reply.kind == "nack" and reply.meta["reason"] == "too-many-runs" and reply.meta["key"] == ["frame", "r", 7]
    assert ing.counts["ingested"] == 0
    ing.flush()
    assert len(sent) == 1  # not acknowledged as well
