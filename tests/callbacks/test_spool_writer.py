"""The spooled writer's own behaviour, on any document callback: order kept off the RunEngine's thread, a
refusal stops the caller at its next document, a flush that waits says so and times out, and a spool whose
disk is full (a real tmpfs) drops nothing. The catalog server's death is in ``test_spool.py``."""

import threading
import time

import pytest

from ns_bluesky.callbacks.spool import SpooledWriter, read_spool
from ns_bluesky.callbacks.spool_files import RunSpool
from tests.support.tmpfs import fill, small_disk


def _writer(tmp_path, callback, **kwargs) -> SpooledWriter:
    return SpooledWriter(lambda: None, lambda node: callback, tmp_path / "spool", **kwargs)


def _run(uid: str, events: int, size: int = 0) -> list[tuple[str, dict]]:
    docs = [("start", {"uid": uid, "time": 0.0}), ("descriptor", {"uid": f"{uid}-d", "run_start": uid, "name": "primary"})]
    docs += [("event", {"uid": f"{uid}-{i}", "descriptor": f"{uid}-d", "seq_num": i + 1, "time": 1.0 + i,
                        "data": {"x": i, "pad": "p" * size}}) for i in range(events)]
    return docs + [("stop", {"uid": f"{uid}-s", "run_start": uid, "time": 9.0, "exit_status": "success"})]


def test_documents_arrive_in_order_off_the_calling_thread(tmp_path):
    seen, threads = [], set()

    def cb(name, doc):
        seen.append(doc["uid"])
        threads.add(threading.get_ident())

    writer = _writer(tmp_path, cb)
    docs = _run("r1", 500)
    for name, doc in docs:
        writer(name, doc)
    writer.close()
    assert seen == [d["uid"] for _, d in docs]
    assert threading.get_ident() not in threads
    assert not list((tmp_path / "spool").iterdir())  # the run is in the catalog: its spool file is gone


def test_a_refused_document_stops_the_caller_at_the_next_document(tmp_path):
    def cb(name, doc):
        if doc.get("seq_num") == 3:
            raise ValueError("catalog refuses this event")

    writer = _writer(tmp_path, cb, name="catalog")
    docs = _run("r2", 6)
    for name, doc in docs[:5]:  # start, descriptor, events 1-3
        writer(name, doc)
    deadline = time.monotonic() + 5
    while not writer._errors and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="catalog: 1 document.*refuses this event"):
        writer(*docs[5])
    writer(*docs[-1])  # the stop document still goes through: the run closes
    with pytest.raises(RuntimeError, match="refuses this event"):
        writer.flush()
    assert read_spool(tmp_path / "spool" / "r2.jsonl") == docs[:6] + docs[-1:]  # the refused run's file stays whole
    writer.close()


def test_flush_says_what_it_waits_for_and_times_out_instead_of_hanging(tmp_path):
    gate = threading.Event()
    told: list[tuple[float, str]] = []
    writer = _writer(tmp_path, lambda name, doc: gate.wait(), name="slow",
                     say=lambda line: told.append((time.monotonic(), line)))
    for name, doc in _run("r3", 2):
        writer(name, doc)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="slow: 5 document.* not yet in the catalog, nothing moved for 3.5 s.*kept in"):
        writer.flush(timeout=3.5)
    waits = [t - t0 for t, line in told if "waiting for" in line]
    assert len(waits) >= 2 and waits[0] < 2.0 and all(b - a < 2.0 for a, b in zip(waits, waits[1:]))
    gate.set()
    writer.close()


def test_a_full_disk_under_the_spool_drops_nothing(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        full: list[OSError] = []
        spool = RunSpool(disk / "r4.jsonl", full.append)
        docs = _run("r4", 400, size=4000)  # about 1.6 MB of documents on a 1 MB disk
        for i, (name, doc) in enumerate(docs):
            assert spool.append(name, doc) == i
        assert len(full) == 1 and spool.memory is not None and 0 < spool.on_disk < len(docs)
        assert spool.documents() == docs  # every one, in order: the file's, then memory's
        assert len(read_spool(disk / "r4.jsonl")) == spool.on_disk  # only whole lines left in the file
        spool.close(remove=True)

        delivered, told = [], []
        fill(disk)
        writer = _writer(tmp_path, lambda name, doc: delivered.append(doc["uid"]), say=told.append,
                         name="catalog")
        writer.spool_dir = disk
        t0 = time.monotonic()
        for name, doc in _run("r5", 50):
            writer(name, doc)
        writer.close()
        assert delivered == [d["uid"] for _, d in _run("r5", 50)]
        assert writer.disk_full == 1 and len([line for line in told if "cannot write the spool" in line]) == 1
        assert time.monotonic() - t0 < 2.0
