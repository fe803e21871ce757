"""The status screen's queue panel in a real (offscreen) Qt application, against the session's real RE Manager
(``queue_server``: bluesky-queueserver with real Redis on loopback): a scan queued and started from the panel
runs and lands in the catalog, bad parameters are refused with the reason, no manager is one clear line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pydm", reason="the screens need the gui extra (pip install 'ns-bluesky[gui]')")
pytest.importorskip("bluesky_queueserver_api", reason="the queue extra is not installed: pip install 'ns-bluesky[queue]'")

from ns_bluesky.io.catalog import open_catalog
from ns_bluesky.io.catalog_layout import derived_runs
from ns_bluesky.pydm_screens.queue_panel import QueuePanel

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screens"


def wait(qtbot, p: QueuePanel, condition, timeout_s: float) -> None:
    """``qtbot.waitUntil`` that says what the panel showed when the time ran out."""
    try:
        qtbot.waitUntil(condition, timeout=int(timeout_s * 1000))
    except qtbot.TimeoutError:
        raise AssertionError(f"panel state: {p.state_line.text()!r}, reply: {p.reply_line.text()!r}") from None


@pytest.fixture
def panel(qtbot):
    made = []

    def make(queue_dir) -> QueuePanel:
        p = QueuePanel(queue_dir=queue_dir)
        qtbot.addWidget(p)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close_worker()
        p._worker.join(10)
        assert not p._worker.is_alive()


def test_without_a_manager_the_panel_says_so_and_add_says_why(qtbot, panel, tmp_path):
    p = panel(tmp_path / "none")
    wait(qtbot, p, lambda: "no queue server is running" in p.state_line.text(), 10)
    assert "ns-bluesky queue start" in p.state_line.text()
    assert not p.buttons["start"].isEnabled() and p.buttons["add"].isEnabled()
    p.buttons["add"].click()
    wait(qtbot, p, lambda: p.reply_line.text().startswith("add failed: no queue server is running"), 10)


@pytest.mark.slow
def test_a_scan_queued_from_the_panel_runs_and_lands_in_raw_and_processed(qtbot, panel, queue_server):
    p = panel(queue_server.dir)
    p.resize(1300, 600)
    p.show()
    wait(qtbot, p, lambda: "shape" in p.fields and "environment open" in p.state_line.text(), 20)
    assert set(p.fields) >= {"pattern", "shape", "overlap", "sample"} and not {"det", "stage"} & set(p.fields)
    assert p.fields["shape"].placeholderText() == "(40, 40)"

    # bad parameters: refused by the manager with the reason, nothing queued
    queued = p.status["items_in_queue"]  # the session's manager may have served other tests
    p.fields["shape"].setText("abc")
    p.buttons["add"].click()
    wait(qtbot, p, lambda: "refused ptycho_scan" in p.reply_line.text(), 20)
    assert "shape: 'str' instances are not allowed as a Sequence value" in p.reply_line.text()
    assert p.status["items_in_queue"] == queued

    p.fields["shape"].setText("3,3")
    p.fields["sample"].setText("from-the-panel")
    p.buttons["add"].click()
    wait(qtbot, p, lambda: p.reply_line.text().startswith("queued ptycho_scan"), 20)
    wait(qtbot, p, lambda: p.queue_table.rowCount() == queued + 1 and p.buttons["start"].isEnabled(), 10)
    assert "from-the-panel" in p.queue_table.item(queued, 1).text()
    p.buttons["start"].click()

    def done():
        rows = [r for r in p.history if "from-the-panel" in r["plan"]]
        return bool(rows and rows[-1]["derived_uids"])

    wait(qtbot, p, done, 180)
    row = [r for r in p.history if "from-the-panel" in r["plan"]][-1]
    assert row["exit_status"] == "completed" and p.queue_table.rowCount() == 0
    (raw_uid,) = row["raw_uids"]
    assert p.history_table.item(0, 1).text() == "completed" and p.history_table.item(0, 3).toolTip() == raw_uid
    assert p.history_table.item(0, 3).text() == raw_uid[:8]
    assert p.history_table.item(0, 4).toolTip() == ", ".join(row["derived_uids"])
    cat = open_catalog(queue_server.catalog, create=False)
    start = cat[raw_uid].metadata["start"]
    assert start["plan_name"] == "ptycho_scan" and start["sample_name"] == "from-the-panel"
    assert [d.metadata["start"]["uid"] for d in derived_runs(cat, raw_uid)] == row["derived_uids"]
    assert derived_runs(cat, raw_uid)[0].metadata["start"]["parent_uid"] == raw_uid
    SHOTS.mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)
    assert p.grab().save(str(SHOTS / "queue_panel.png"))
