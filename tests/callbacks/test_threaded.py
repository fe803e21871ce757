"""ThreadedCallback: order kept, errors surface on the next document and at flush."""

import threading
import time

import pytest
from ns_bluesky.callbacks import ThreadedCallback


def test_documents_arrive_in_order_off_the_calling_thread():
    seen, threads = [], set()

    def cb(name, doc):
        seen.append(doc["i"])
        threads.add(threading.get_ident())

    tc = ThreadedCallback(cb, name="t")
    for i in range(500):
        tc("event", {"i": i})
    tc.close()
    assert seen == list(range(500))
    assert threading.get_ident() not in threads


def test_a_failing_consumer_stops_the_caller_at_the_next_document():
    def cb(name, doc):
        if doc["i"] == 3:
            raise OSError("catalog disk full")

    tc = ThreadedCallback(cb, name="catalog")
    for i in range(4):
        tc("event", {"i": i})
    deadline = time.monotonic() + 5
    while not tc._errors and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="catalog: 1 document.*disk full"):
        tc("event", {"i": 4})
    with pytest.raises(RuntimeError, match="disk full"):
        tc.flush()


def test_flush_times_out_instead_of_hanging():
    gate = threading.Event()
    tc = ThreadedCallback(lambda name, doc: gate.wait(), name="slow")
    tc("event", {})
    tc("event", {})
    with pytest.raises(TimeoutError, match="slow: .* still queued"):
        tc.flush(timeout=0.2)
    gate.set()
    tc.close()
