"""The spill alone: queued items' messages to disk and back, in order, without sockets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ns_bluesky.stream.broker.spill import Spill
from ns_bluesky.stream.protocol import Message


@dataclass
class _Item:  # what the spill reads and writes of an item
    id: int
    msg: Message | None
    spill: Path | None = None


def test_spilled_items_come_back_whole_and_in_order(tmp_path):
    spill = Spill(tmp_path / "spill")  # made on first use
    items = [
        _Item(i, Message("frame", run="r", seq=i, meta={"k": [i, "x"]}, arrays={"raw": np.full((3, 5), i, np.uint16)}))
        for i in range(1, 6)
    ]
    for item in items:
        spill.put(item)
        assert item.msg is None and item.spill.exists()
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == [f"{i}.msg" for i in range(1, 6)]
    for item in items:
        msg = spill.take(item)
        assert item.msg is msg and item.spill is None
        assert (msg.kind, msg.run, msg.seq, msg.meta["k"]) == ("frame", "r", item.id, [item.id, "x"])
        np.testing.assert_array_equal(msg.arrays["raw"], np.full((3, 5), item.id, np.uint16))
    assert not list((tmp_path / "spill").iterdir())  # each file went when its item came back


def test_a_message_without_arrays_round_trips(tmp_path):
    spill = Spill(tmp_path)
    item = _Item(7, Message("result", run="r", seq=3, stage="s", meta={"a": 1}))
    spill.put(item)
    msg = spill.take(item)
    assert (msg.kind, msg.stage, msg.meta, msg.arrays) == ("result", "s", {"a": 1}, {})


def test_discard_and_clear_remove_the_files(tmp_path):
    spill = Spill(tmp_path / "s")
    kept, dropped, never = (_Item(i, Message("frame", run="r", seq=i)) for i in (1, 2, 3))
    spill.put(kept)
    spill.put(dropped)
    spill.discard(dropped)
    spill.discard(never)  # never spilled: nothing to do
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["1.msg"]
    spill.clear()
    assert not list((tmp_path / "s").iterdir())
    Spill(tmp_path / "absent").clear()  # nothing spilled, no folder: fine
