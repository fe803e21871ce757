"""Shared results alone: every consuming worker gets each, the latest few are kept for late workers."""

from __future__ import annotations

from ns_bluesky.stream.broker.scheduler import ModuleState, Scheduler
from ns_bluesky.stream.broker.shared import MAX_SHARED, SharedItems
from ns_bluesky.stream.broker.slots import Slots
from ns_bluesky.stream.config import ModuleSpec
from ns_bluesky.stream.protocol import Message


def make():
    sent = []
    mods = {
        "dark": ModuleState(ModuleSpec(name="dark", module="dark"), ("frame",)),
        "frame": ModuleState(ModuleSpec(name="frame", module="frame"), ("frame", "dark")),
    }
    s = Scheduler(mods, send_item=lambda w, it: sent.append((w.identity, it)), post=None, slots=Slots(False), lost=None)
    return SharedItems(s), s, sent


def dark(run):
    return Message("result", run=run, stage="dark", meta={"of": run})


def test_the_stages_are_what_the_modules_declare_shared():
    shared, _, _ = make()
    assert shared.stages == {"dark"}


def test_a_shared_result_reaches_every_worker_of_its_consumers_and_no_other():
    shared, s, sent = make()
    s.add(b"F1", "frame", 1, 2, 0.0)
    s.add(b"F2", "frame", 2, 2, 0.0)
    s.add(b"D", "dark", 3, 2, 0.0)
    shared.share(dark("d1"))
    assert [w for w, _ in sent] == [b"F1", b"F2"]
    assert all(it.broadcast and it.msg.meta == {"of": "d1"} for _, it in sent)
    assert ("dark", "d1") in shared and ("dark", "d2") not in shared


def test_the_latest_few_are_kept_oldest_out_first():
    shared, _, _ = make()
    for i in range(MAX_SHARED):
        shared.share(dark(f"d{i}"))
    shared.share(dark("d0"))  # again: now the newest
    shared.share(dark("new"))
    assert [run for _, run in shared.latest] == [f"d{i}" for i in range(2, MAX_SHARED)] + ["d0", "new"]


def test_a_late_worker_gets_what_its_module_consumes():
    shared, s, sent = make()
    shared.share(dark("d1"))
    shared.share(dark("d2"))
    late = s.add(b"F", "frame", 1, 2, 0.0)
    shared.replay(late, s.modules["frame"])
    assert [(w, it.msg.run) for w, it in sent] == [(b"F", "d1"), (b"F", "d2")]
    other = s.add(b"D", "dark", 2, 2, 0.0)
    shared.replay(other, s.modules["dark"])  # the dark module does not consume darks
    assert len(sent) == 2
