"""The embedded tiled catalog: frames read back lazily equal what the device wrote; queries users need."""


import numpy as np
import pytest
from tiled.queries import Key

from ns_bluesky.errors import CatalogError
from ns_bluesky.io.catalog import get_run, last_scan_id, open_catalog, search_runs
from tests.support.processes import process_running


def test_frames_read_back_lazily_equal_what_the_device_wrote(cat, recorded):
    run = cat[recorded["scan"]]
    frames = run["primary"]["fccd_image"]
    assert frames.shape == (20, 1040, 1152) and frames.dtype == np.uint16
    np.testing.assert_array_equal(frames[7], recorded["scan_frames"][7])  # one frame, fetched alone
    np.testing.assert_array_equal(frames[2:4, :10, :10], recorded["scan_frames"][2:4, :10, :10])
    dark = cat[recorded["dark"]]["primary"]["fccd_image"].read()
    np.testing.assert_array_equal(dark, recorded["dark_frames"])


def test_positions_are_the_stage_readbacks(cat, recorded):
    run = cat[recorded["scan"]]
    x = np.asarray(run["primary"]["stage_x"].read())
    x_set = np.asarray(run["primary"]["stage_x_setpoint"].read())
    planned = np.asarray(run.metadata["start"]["planned_positions_m"])
    np.testing.assert_allclose(x_set, planned[:, 1])
    assert np.all(x != x_set) and np.abs(x - x_set).max() < 2e-8


def test_lookup_by_scan_id_uid_prefix_and_recency(cat, recorded):
    run = cat[recorded["scan"]]
    sid = run.metadata["start"]["scan_id"]
    assert cat[sid].metadata["start"]["uid"] == recorded["scan"]
    assert cat[recorded["scan"][:8]].metadata["start"]["uid"] == recorded["scan"]
    assert get_run(cat, str(sid)).metadata["start"]["uid"] == recorded["scan"]
    assert last_scan_id(cat) >= sid
    with pytest.raises(CatalogError, match="no run 'zzzz'"):
        get_run(cat, "zzzz")


def test_queries_users_need(cat, recorded):
    def uids(node):
        return set(node)

    sid = cat[recorded["scan"]].metadata["start"]["scan_id"]
    assert uids(search_runs(cat, scan_id=sid)) == {recorded["scan"]}
    assert uids(search_runs(cat, uid=recorded["other"][:10])) == {recorded["other"]}
    assert uids(search_runs(cat, sample="gold-balls")) == {recorded["other"]}
    assert uids(search_runs(cat, plan_name="dark_frames")) >= {recorded["dark"]}
    assert recorded["scan"] not in uids(search_runs(cat, plan_name="dark_frames"))
    t = cat[recorded["scan"]].metadata["start"]["time"]
    assert recorded["scan"] in uids(search_runs(cat, since=t - 1, until=t + 1))
    assert recorded["dark"] not in uids(search_runs(cat, since=t - 0.0001, until=t + 0.0001))
    assert uids(search_runs(cat, since="2000-01-01", until="2000-01-02")) == set()
    assert recorded["other"] in uids(search_runs(cat, text="gold"))
    # the scans that used this dark (derived runs name it too, and are told apart by their purpose)
    assert uids(cat.search(Key("dark_uid") == recorded["dark"]).search(Key("purpose") != "derived")) == {recorded["scan"]}
    with pytest.raises(CatalogError, match="ISO 8601"):
        search_runs(cat, since="last tuesday")


def test_documents_replay(cat, recorded):
    names = [name for name, _ in cat[recorded["scan"]].documents()]
    assert names[0] == "start" and names[-1] == "stop"
    assert "stream_resource" in names and names.count("stream_datum") >= 1


def test_a_second_process_reads_the_catalog_while_this_one_serves_it(cat, catalog_dir, recorded):
    """One server per catalog directory: another process connects to it instead of locking it out."""
    import subprocess
    import sys

    code = (
        "import sys; from ns_bluesky.io.catalog import open_catalog; "
        f"run = open_catalog(sys.argv[1])[{recorded['scan']!r}]; "
        "print(run.metadata['start']['sample_name'], len(run['primary']['stage_x'].read()), run['primary']['fccd_image'][3].shape)"
    )
    cat[recorded["scan"]]["primary"]["stage_x"].read()  # this process holds the tables open
    out = subprocess.run([sys.executable, "-c", code, str(catalog_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "star 20 (1040, 1152)"


def test_a_file_is_not_a_catalog(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(CatalogError, match="is a file"):
        open_catalog(f)


def test_same_code_against_a_standalone_tiled_server(tmp_path, small_config, monkeypatch):
    """An http URI opens a tiled server running in another process; RunEngine writes, queries read."""
    import subprocess
    import sys

    from bluesky import RunEngine
    from ns_bluesky.ophyd_devices import make_sim_beamline

    from ns_bluesky.io.catalog import make_tiled_writer
    from ns_bluesky.plans import ptycho_scan
    from ns_bluesky.stream.config import free_loopback_ports

    (port,) = free_loopback_ports(1)
    data = tmp_path / "server"
    code = (
        "import sys, time; from tiled.server import SimpleTiledServer; "
        f"srv = SimpleTiledServer({str(data)!r}, api_key='secret', port={port}, readable_storage=[{str(tmp_path / 'det')!r}]); "
        "print('up', flush=True); time.sleep(600)"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        monkeypatch.setenv("NS_BLUESKY_API_KEY", "secret")  # the key from the environment, never the URL
        cat = open_catalog(f"http://127.0.0.1:{port}/api")
        bl = make_sim_beamline(tmp_path / "det", small_config, rate_hz=0)
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(make_tiled_writer(cat))
        (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, optics=bl.optics, shape=(2, 2), step=5e-8, sample="remote"))
        assert set(search_runs(cat, sample="remote")) == {uid}
        assert cat[uid]["primary"]["fccd_image"].shape == (4, 1040, 1152)
    finally:
        server.terminate()
        server.wait(10)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(CatalogError, match="cannot reach the tiled server at http://127.0.0.1:9"):
        open_catalog("http://127.0.0.1:9/api")


def test_read_only_open_does_not_create_a_catalog(tmp_path):
    with pytest.raises(CatalogError, match="no catalog at .*typo"):
        open_catalog(tmp_path / "typo", create=False)
    assert not (tmp_path / "typo").exists()


def test_two_catalogs_served_by_one_process_both_answer(cat, recorded, tmp_path):
    """A session that opens a second catalog directory (a scratch catalog, a replay into
    another one) must not lock the clients of the first out (tiled keeps one API key per
    process: in-process servers once did; each server now has a process of its own)."""
    other = open_catalog(tmp_path / "second")
    assert len(other) == 0
    assert cat[recorded["scan"]].metadata["start"]["uid"] == recorded["scan"]


def test_writers_appending_at_once_all_land(tmp_path):
    """The raw and the derived run's writers append together; the embedded server's
    DuckDB tables must take them one at a time (unserialized, commit() hung or failed with 500)."""
    import threading

    import pyarrow as pa

    cat = open_catalog(tmp_path / "cat")
    rows, appends, writers = 5, 60, 4
    failures: list[str] = []

    def write(k: int) -> None:
        try:
            table = pa.table({"seq_num": np.arange(rows), "photons": np.full(rows, float(k))})
            node = cat.create_container(f"writer{k}").create_appendable_table(schema=table.schema, key="internal")
            for _ in range(appends):
                node.append_partition(0, table)
            got = node.read()
            if len(got) != rows * appends or not np.all(np.asarray(got["photons"]) == k):
                failures.append(f"writer {k}: {len(got)} rows")
        except Exception as exc:  # the failure is the finding; report it with the others
            failures.append(f"writer {k}: {exc!r}"[:300])

    threads = [threading.Thread(target=write, args=(k,), daemon=True) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert failures == []


def test_batches_sized_for_the_frame_rate_lose_no_event(cat):
    """At --rate 0 the writer posts 250 events per request; a run that is not a multiple of
    the batch still ends with every event in the catalog (the rest goes at the stop document)."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    from ns_bluesky.io.catalog import make_tiled_writer, writer_batch

    assert writer_batch(0) == 250 and writer_batch(10) == 25 and writer_batch(40) == 100 and writer_batch(1e4) == 250
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)  # scan ids of its own
    RE.subscribe(make_tiled_writer(cat, batch_size=writer_batch(0)))
    (uid,) = RE(count([det], 260, md={"sample_name": "batching"}))
    assert len(cat[uid]["primary"]["det"].read()) == 260


def test_the_catalog_server_outlives_ctrl_c_but_not_its_process(tmp_path):
    """The embedded server runs in a process of its own: Ctrl-C (SIGINT to the scan's process
    group) must leave it serving, so an aborted scan's stop document still lands; when the
    process that started it dies, even by SIGKILL, it stops and says so in server.json."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, json, time; from ns_bluesky.io.catalog import open_catalog, _servers; "
        "cat = open_catalog(sys.argv[1]); (proc, uri), = _servers.values(); "
        "print(json.dumps({'pid': proc.pid, 'uri': uri}), flush=True); time.sleep(600)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cat")], stdout=subprocess.PIPE, text=True)
    try:
        said = json.loads(owner.stdout.readline())
        info = tmp_path / "cat" / "server.json"
        assert json.loads(info.read_text())["pid"] == said["pid"]
        os.kill(said["pid"], signal.SIGINT)
        time.sleep(1)
        assert len(open_catalog(tmp_path / "cat")) == 0  # still answers (through server.json)
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process_running(said["pid"]):
            time.sleep(0.2)
        assert not process_running(said["pid"]) and not info.exists()
    finally:
        owner.kill()

