"""The PyDM screens in a real (offscreen) Qt application, fed by a real pipeline on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydm", reason="the screens need the gui extra (pip install 'ns-bluesky[gui]')")

from ns_bluesky.pydm_screens import hub as hubmod
from ns_bluesky.pydm_screens.plugin import NSStreamPlugin
from pydm.data_plugins import plugin_for_address

from ns_bluesky.apps.session import PipelineSession
from ns_bluesky.io.catalog_layout import derived_runs
from ns_bluesky.stages.pipeline import ptycho_pipeline
from ns_bluesky.stream.client import ControlClient, IngestClient, PipelineUnavailable
from ns_bluesky.stream.protocol import Message
from tests.support.scan import SimScan

pytestmark = pytest.mark.slow
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screens"


@pytest.fixture
def watch(monkeypatch):
    """Point the nsstream plugin at a pipeline configuration file; a fresh hub per test."""

    def point(cfg, path: Path) -> Path:
        path.write_text(cfg.model_dump_json())
        monkeypatch.setenv("NS_BLUESKY_PIPELINE", str(path))
        return path

    yield point
    hubmod.close_hubs()


def _shot(widget, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert widget.grab().save(str(path))
    assert path.stat().st_size > 5_000
    return path


def test_the_plugin_is_found_through_its_entry_point(qapp):
    plugin = plugin_for_address("nsstream://recon/phase")
    assert isinstance(plugin, NSStreamPlugin)


def test_live_and_status_screens_show_a_real_scan_and_the_viewer_opens_its_results(qtbot, watch, tmp_path, cat, catalog_dir):
    from ns_bluesky.pydm_screens.live import PtychoLive
    from ns_bluesky.pydm_screens.status import PipelineStatus
    from ns_bluesky.pydm_screens.viewer import Viewer

    cfg = ptycho_pipeline(frame_workers=1, out_dir=tmp_path / "cxi", refine_s=2.0)
    for spec in cfg.modules:
        if spec.name == "recon":
            spec.params.update(min_frames=6, final_seconds=1.5, publish_every_s=0.5)
    watch(cfg, tmp_path / "pipeline.json")
    scan = SimScan(shape=(5, 5), seed=3)
    n = len(scan.sim.planned)
    with PipelineSession(cat, catalog_dir, cfg, tmp_path / "work", progress=False):
        live, status = PtychoLive(), PipelineStatus()
        qtbot.addWidget(live)
        qtbot.addWidget(status)
        live.resize(1500, 1000)
        live.show()
        qtbot.waitUntil(lambda: live.ui.state._connected and live.ui.state.value == "running", timeout=10_000)

        def send():
            client = IngestClient(cfg)
            client.send(scan.start(dark=True))
            for seq in range(1, 5):
                client.send(scan.dark_frame(seq))
            client.send(Message("stop", run=scan.dark_uid, meta={"num_frames": 4}))
            client.send(scan.start())
            for seq in range(1, n + 1):
                client.send(scan.frame(seq))
                time.sleep(0.25)
            client.send(Message("stop", run=scan.uid, meta={"num_frames": n}))
            client.flush(30)
            client.close()

        feeder = threading.Thread(target=send, daemon=True)
        feeder.start()
        # mid-scan: a live reconstruction on part of the frames
        qtbot.waitUntil(lambda: live.ui.recon_phase.image_waveform is not None and bool(live.ui.recon_frames.value), timeout=60_000)
        assert feeder.is_alive() and 0 < live.ui.recon_frames.value < n
        _shot(live, "ptycho_live_mid_scan.png")
        feeder.join(60)
        h = hubmod.hub()
        qtbot.waitUntil(lambda: h.get("end_of_run/frames")[1] == n, timeout=60_000)
        qtbot.waitUntil(lambda: live.ui.recon_frames.value == n, timeout=30_000)

        obj = h.get("recon/object_phase")[1]
        assert obj.ndim == 2 and live.ui.recon_phase.image_waveform.shape == obj.shape
        assert live.ui.recon_amplitude.image_waveform.shape == obj.shape
        assert live.ui.stxm.image_waveform.shape == (5, 5)
        assert live.ui.probe.image_waveform.shape == (128, 128)
        assert live.ui.clean_frame.image_waveform.shape == (128, 128)
        assert live.ui.raw_frame.image_waveform.shape == (260, 288)  # 1040 x 1152 binned 4 x 4
        curve = live.ui.error_curve._curves[0]
        history = h.get("recon/residual/history")[1]  # the run has ended: no more updates
        qtbot.waitUntil(lambda: curve.latest_y is not None and len(curve.latest_y) == len(history), timeout=10_000)
        assert len(history) >= 3 and np.all(np.isfinite(curve.latest_y))
        np.testing.assert_allclose(curve.latest_y, history)
        assert curve.latest_y[-1] == pytest.approx(h.get("recon/residual")[1])
        assert np.isfinite(live.ui.residual.value) and live.ui.residual.value > 0
        assert live.ui.scan_id.value == 7 and live.ui.sample.value == "star"
        assert "started" in live.ui.log_tail.value and "ended" in live.ui.log_tail.value
        qtbot.waitUntil(lambda: status.findChild(type(live.ui.state), "frame_processed").value == n, timeout=10_000)
        assert status.findChild(type(live.ui.state), "frame_workers").value == 1
        _shot(live, "ptycho_live_end.png")
        _shot(status, "pipeline_status.png")
        raw = scan.uid

    found = derived_runs(cat, raw)  # beside the raw runs, in the processed node
    assert len(found) == 1
    derived_uid = found[0].metadata["start"]["uid"]
    viewer = Viewer(args=[derived_uid, "--catalog", str(catalog_dir)])
    qtbot.addWidget(viewer)
    viewer.resize(1400, 900)
    names = [viewer.ui.image_choice.itemText(i) for i in range(viewer.ui.image_choice.count())]
    assert {"object phase", "probe amplitude", "STXM transmission"} <= set(names), names
    viewer.ui.image_choice.setCurrentText("STXM transmission")
    assert viewer.ui.image.getImageItem().image.shape == (5, 5)
    assert len(viewer.positions.data) == n  # every frame's position over the STXM map
    assert len(viewer.ui.error_curve.getPlotItem().listDataItems()) == 1
    _shot(viewer, "viewer_derived_run.png")

    (cxi,) = (tmp_path / "cxi").glob("*_clean.cxi")  # the same scan as the pipeline wrote it
    viewer.open(str(cxi))
    assert viewer.ui.title.text() == cxi.name
    assert viewer.ui.image_choice.currentText() == "object phase"
    assert viewer.ui.image.getImageItem().image.T.shape == obj.shape  # the CXI holds the final object
    assert len(viewer.positions.data) == n
    viewer.open(str(tmp_path / "missing.cxi"))
    assert "cannot open" in viewer.ui.title.text() and viewer.data.title == cxi.name  # the last good view stays


def test_the_hub_keeps_latest_values_histories_per_run_and_displayable_images():
    from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports

    c, i, w, r = free_loopback_ports(4)  # nobody answers there: the hub is fed by hand
    h = hubmod.StreamHub(PipelineConfig(control_port=c, ingest_port=i, worker_port=w, results_port=r), poll_s=0.2)
    try:
        stxm = np.full((3, 3), np.nan, np.float32)
        stxm[0, :2] = (0.5, 0.9)
        for run, residual in (("a", 0.3), ("a", 0.2), ("b", 0.7)):
            h._on_message(Message("result", run=run, stage="recon", meta={"scalars": {"residual": residual, "frames": 4}},
                                  arrays={"object_phase": np.ones((4, 4), np.float32)}))
        h._on_message(Message("result", run="b", stage="stxm", arrays={"transmission": stxm}))
        assert h.get("recon/residual")[1] == 0.7
        np.testing.assert_array_equal(h.get("recon/residual/history")[1], [0.7])  # a new run starts a new curve
        assert h.get("recon/phase")[1].shape == (4, 4)  # the screens' name for the object's phase
        shown = h.get("stxm/transmission")[1]
        assert np.isfinite(shown).all() and shown[2, 2] == 0.5 and shown[0, 1] == np.float32(0.9)
        assert h.get("nothing/here") == (0, None)
        time.sleep(0.6)
        assert not h.alive and h.get("status/state")[1] == "down" and "pipeline down" in h.get("log/tail")[1]
    finally:
        h.close()


def test_the_plugin_follows_the_handler_down_and_up(qtbot, watch, make_pipeline, tmp_path):
    from pydm.widgets import PyDMLabel

    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=1, delay=0.0))
    watch(pipe.cfg, tmp_path / "watched.json")
    label = PyDMLabel(init_channel="nsstream://status/echo/workers")
    qtbot.addWidget(label)
    qtbot.waitUntil(lambda: label._connected and label.value == 1, timeout=10_000)
    pipe.stop()
    qtbot.waitUntil(lambda: not label._connected, timeout=10_000)
    again = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(tmp_path / "pipeline.toml")])
    try:
        qtbot.waitUntil(lambda: label._connected, timeout=30_000)
        assert "pipeline up" in hubmod.hub().get("log/tail")[1] and "pipeline down" in hubmod.hub().get("log/tail")[1]
    finally:
        ControlClient(pipe.cfg)("stop")
        again.wait(20)


def test_the_control_buttons_act_on_the_pipeline(qtbot, watch, make_pipeline, tmp_path):
    from ns_bluesky.pydm_screens.status import PipelineStatus

    from tests.support.pipeline import ECHO

    pipe = make_pipeline(ECHO.format(workers=1, delay=0.0))
    watch(pipe.cfg, tmp_path / "watched.json")  # the start button starts this configuration
    status = PipelineStatus()
    qtbot.addWidget(status)
    ui = status.ui
    buttons = (ui.stop_button, ui.abort_button, ui.reset_button)
    qtbot.waitUntil(lambda: all(b.isEnabled() and b.value is not None for b in buttons), timeout=10_000)
    for button in buttons:
        assert button.showConfirmDialog  # destructive: they ask first
        button.showConfirmDialog = False

    ui.abort_button.click()
    qtbot.waitUntil(lambda: (ui.reply.value or "").startswith("abort: done"), timeout=10_000)

    spin = status.scale["echo"]
    qtbot.waitUntil(lambda: spin.value == 1, timeout=10_000)
    spin.send_value_signal[int].emit(2)
    qtbot.waitUntil(lambda: status.findChild(type(ui.reply), "echo_workers").value == 2, timeout=30_000)
    assert ui.reply.value == "scale: echo to 2 workers"

    ui.stop_button.click()
    qtbot.waitUntil(lambda: ui.reply.value == "stop: done", timeout=10_000)
    pipe.proc.wait(20)
    qtbot.waitUntil(lambda: ui.state.value == "down", timeout=10_000)
    assert not ui.abort_button.isEnabled() and ui.start_button.isEnabled()  # only start works on a stopped pipeline

    ui.start_button.click()
    try:
        qtbot.waitUntil(lambda: ui.reply.value == "start: pipeline ready", timeout=60_000)
        qtbot.waitUntil(lambda: ui.state.value == "running" and ui.abort_button.isEnabled(), timeout=10_000)
    finally:
        try:
            ControlClient(pipe.cfg)("stop")
        except PipelineUnavailable:
            pass
