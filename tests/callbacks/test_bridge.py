"""The bridge from a real RunEngine scan into a real pipeline, with and without the pipeline up."""

import time

import numpy as np

from ns_bluesky.callbacks.bridge import PipelineBridge
from ns_bluesky.instrument.detector import assemble
from ns_bluesky.plans import ptycho_scan


def _scan(RE, beamline, shape=(4, 5)):
    return RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, shape=shape, step=5e-8))


def test_frames_and_positions_reach_the_workers(make_pipeline, RE, beamline):
    pipe = make_pipeline()
    bridge = PipelineBridge(pipe.cfg)
    RE.subscribe(bridge)
    frames = []
    write = beamline.fccd.writer.write
    beamline.fccd.writer.write = lambda f: (frames.append(f.copy()), write(f))[1]
    (uid,) = _scan(RE, beamline)
    bridge.flush()
    msgs = pipe.results.collect(lambda ms: pipe.results.ended(uid), timeout_s=60)
    results = sorted((m for m in msgs if m.kind == "result" and m.run == uid), key=lambda m: m.seq)
    assert [m.seq for m in results] == list(range(1, 21))
    np.testing.assert_array_equal(results[3].arrays["raw"], frames[3])
    assert results[3].arrays["raw"].shape == (1040, 1152)
    assert assemble(results[3].arrays["raw"], beamline.fccd.geometry).shape == (960, 960)
    t = bridge._translate  # the run's stop let go of its files, resources, datums and streams: a session does not grow
    assert (t.files.resources, t.files.datasets, t.datums, t.streams) == ({}, {}, {}, {})
    bridge.close()


def test_scan_finishes_with_the_pipeline_down_and_nothing_is_lost_once_it_is_up(tmp_path, RE, beamline):
    from tests.support.pipeline import ECHO, Pipeline, write_config

    cfg = write_config(tmp_path / "later.toml", ECHO.format(workers=1, delay=0.0))
    bridge = PipelineBridge(cfg)
    RE.subscribe(bridge)
    t0 = time.monotonic()
    (uid,) = _scan(RE, beamline, shape=(3, 4))
    assert time.monotonic() - t0 < 30  # the RunEngine did not wait for the absent pipeline
    assert bridge.lag > 0
    pipe = Pipeline.__new__(Pipeline)
    import subprocess
    import sys

    from ns_bluesky.stream.client import ControlClient
    from tests.support.pipeline import Results

    pipe.cfg = cfg
    pipe.results = Results(cfg)  # subscribed before the handler binds: nothing it publishes is missed
    pipe.proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(tmp_path / "later.toml")])
    pipe.control = ControlClient(cfg, timeout_s=5)
    try:
        pipe.control.wait_ready(60)
        bridge.flush(60)
        assert bridge.lag == 0
        msgs = pipe.results.collect(lambda ms: pipe.results.ended(uid), timeout_s=60)
        assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == uid) == list(range(1, 13))
    finally:
        pipe.stop()
        bridge.close()


def test_a_baseline_stream_does_not_collide_with_the_frames(make_pipeline, RE, beamline):
    import bluesky.preprocessors as bpp

    pipe = make_pipeline()
    bridge = PipelineBridge(pipe.cfg)
    RE.subscribe(bridge)
    plan = ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, optics=beamline.optics, shape=(2, 3), step=5e-8)
    (uid,) = RE(bpp.baseline_wrapper(plan, [beamline.optics]))
    bridge.flush()
    msgs = pipe.results.collect(lambda ms: pipe.results.ended(uid), timeout_s=60)
    results = [m for m in msgs if m.kind == "result" and m.run == uid]
    assert sorted(m.seq for m in results) == list(range(1, 7))
    assert all(m.arrays["raw"].shape == (1040, 1152) for m in results)
    assert bridge.skipped == 2  # the baseline's readings before and after
    bridge.close()


def test_frames_are_read_back_whatever_the_files_layout(tmp_path):
    """The detector's one-raw-chunk-per-frame files are read by chunk; any other layout
    (compressed, several frames a chunk) goes through h5py's reader and gives the same frames."""
    import h5py

    from ns_bluesky.callbacks.bridge import _FrameFiles

    frames = np.random.default_rng(0).integers(0, 4000, (5, 16, 12), dtype=np.uint16)
    files = _FrameFiles()
    for name, opts in {"raw": {"chunks": (1, 16, 12)}, "gzip": {"chunks": (2, 16, 12), "compression": "gzip"}}.items():
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry/data/data", data=frames, maxshape=(None, 16, 12), **opts)
        files.add({"uid": name, "uri": f"file://localhost{path}", "parameters": {"dataset": "/entry/data/data"}})
        for i in (0, 3, 4):
            np.testing.assert_array_equal(files.read(name, i), frames[i])
    assert [raw for _, raw in files.datasets.values()] == [True, False]
    files.close()
