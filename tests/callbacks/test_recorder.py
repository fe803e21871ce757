"""Results from a real pipeline recorded as derived runs in the real catalog, found by their raw run."""

import numpy as np
from tiled.queries import Key

from ns_bluesky.callbacks.recorder import ResultsRecorder
from ns_bluesky.io.catalog import detector_dir, make_tiled_writer
from ns_bluesky.stream.protocol import Message

CHAIN = (
    '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 2\n'
    '[[modules]]\nname = "count"\nmodule = "tally"\nworkers = 1\n'
)


def _wait(predicate, timeout_s=30.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_each_runs_results_become_a_derived_run(make_pipeline, cat, processed, catalog_dir, recorded):
    pipe = make_pipeline(CHAIN)
    raw_uid = recorded["scan"]  # the bridge names pipeline runs by the raw run's uid
    recorder = ResultsRecorder(pipe.cfg, make_tiled_writer(processed), detector_dir(catalog_dir),
                               dark_uid_of=lambda uid: cat[uid].metadata["start"].get("dark_uid"), md={"pipeline": "echo+tally"})
    try:
        client = pipe.ingest()
        client.send(Message("start", run=raw_uid))
        for seq in range(1, 21):
            client.send(Message("frame", run=raw_uid, seq=seq, arrays={"image": np.full((40, 48), seq, np.uint16)}))
        client.send(Message("stop", run=raw_uid))
        client.flush()
        assert _wait(lambda: raw_uid in recorder.finished)
    finally:
        recorder.close()
    derived_uid = recorder.finished[raw_uid]
    found = processed.search(Key("parent_uid") == raw_uid).search(Key("pipeline") == "echo+tally")
    assert derived_uid in list(found)
    run = found[derived_uid]
    start, stop = run.metadata["start"], run.metadata["stop"]
    assert start["dark_uid"] == recorded["dark"] and stop["exit_status"] == "success"
    echo = run["echo"]
    seqs = np.asarray(echo["seq"].read())
    assert sorted(seqs) == list(range(1, 21))
    images = np.asarray(echo["image"].read())
    assert all(images[i].min() == images[i].max() == seqs[i] for i in range(20))  # each frame with its own seq
    tally = run["tally"]
    assert list(tally["count"].read()) == [20] and float(tally["checksum"].read()[0]) == sum(s * 40 * 48 for s in range(1, 21))


def test_an_aborted_run_is_recorded_as_aborted(make_pipeline, processed, catalog_dir, recorded):
    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=1, delay=0.2))
    raw_uid = recorded["other"]
    recorder = ResultsRecorder(pipe.cfg, make_tiled_writer(processed), detector_dir(catalog_dir))
    try:
        client = pipe.ingest()
        client.send(Message("start", run=raw_uid))
        for seq in range(1, 30):
            client.send(Message("frame", run=raw_uid, seq=seq, arrays={"image": np.zeros((8, 8), np.uint16)}))
        client.flush()
        assert _wait(lambda: raw_uid in recorder.runs)  # a first result was recorded
        pipe.control("abort", run=raw_uid)
        assert _wait(lambda: raw_uid in recorder.finished)
    finally:
        recorder.close()
    run = processed[recorder.finished[raw_uid]]
    assert run.metadata["stop"]["exit_status"] == "abort"
    assert run.metadata["start"]["parent_uid"] == raw_uid


def test_the_refined_reconstruction_is_recorded_though_it_carries_more_scalars(tmp_path):
    """The reconstruction's refined result adds refine_* scalars its earlier results lack: the stream keeps
    them as NaN until known, instead of refusing the refined (best) reconstruction."""
    from ns_bluesky.stages.pipeline import ptycho_pipeline

    docs = []
    recorder = ResultsRecorder(ptycho_pipeline(out_dir=tmp_path), lambda name, doc: docs.append((name, doc)), tmp_path)
    try:
        arrays = {"object_phase": np.zeros((8, 8), np.float32)}
        recorder._on_message(Message("result", run="raw", seq=1, stage="recon", arrays=arrays,
                                     meta={"scalars": {"iteration": 10, "residual": 0.5, "refined": 0}}))
        recorder._on_message(Message("result", run="raw", seq=2, stage="recon", arrays=arrays,
                                     meta={"scalars": {"iteration": 90, "residual": 0.1, "refined": 1, "refine_iterations": 80,
                                                       "refine_best_iteration": 75, "refine_seconds": 2.5}}))
        recorder._on_message(Message("end_of_run", run="raw", meta={}))
    finally:
        recorder.close()
    events = [d["data"] for n, d in docs if n == "event"]
    assert [e["iteration"] for e in events] == [10, 90] and np.isnan(events[0]["refine_iterations"])
    assert events[1]["refine_iterations"] == 80.0 and events[1]["refine_seconds"] == 2.5
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]


def test_a_result_whose_arrays_find_the_disk_full_is_noted_not_lost_silently(tmp_path, capfd):
    """The derived arrays' disk (a real tmpfs, filled) refuses a reconstruction: its derived run gets an
    ``errors`` row naming it, the user one line, and the run still closes."""
    from ns_bluesky.stages.pipeline import ptycho_pipeline
    from tests.support.tmpfs import fill, small_disk

    with small_disk(tmp_path / "derived", "1m") as disk:
        fill(disk)
        docs = []
        recorder = ResultsRecorder(ptycho_pipeline(out_dir=tmp_path), lambda name, doc: docs.append((name, doc)), disk)
        try:
            for seq in (1, 2):
                recorder._on_message(Message("result", run="raw", seq=seq, stage="recon",
                                             arrays={"object_phase": np.zeros((64, 64), np.float32)},
                                             meta={"scalars": {"iteration": 10 * seq, "residual": 0.5}}))
            recorder._on_message(Message("end_of_run", run="raw", meta={}))
        finally:
            recorder.close()
    assert recorder.disk_full == 2
    errors = [d["data"] for n, d in docs if n == "event"]
    assert [e["seq"] for e in errors] == [1, 2] and all("disk full" in e["error"] for e in errors)
    assert [d["name"] for n, d in docs if n == "descriptor"] == ["errors"]  # no half-made reconstruction stream
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    said = capfd.readouterr().err
    assert said.count("results-recorder:") == 1 and "not stored" in said
