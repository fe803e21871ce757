"""The console scripts, run as a user runs them: real processes, real exit codes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from ns_bluesky.apps.cli import build_parser, build_raw2cxi_parser, nsraw2cxi_main

BIN = Path(sys.executable).parent


def _run(*args, timeout=300, env=None):
    exe = shutil.which(args[0], path=str(BIN)) or args[0]
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout, env=env)


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("sub", _subcommands())
def test_every_subcommand_has_help(sub):
    out = _run("ns-bluesky", sub, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: ns-bluesky" in out.stdout


def test_nsraw2cxi_help_and_top_level_help():
    assert "--raw" in _run("nsraw2cxi", "--help").stdout
    top = _run("ns-bluesky", "--help")
    assert top.returncode == 0 and "demo" in top.stdout and "runs" in top.stdout
    assert build_raw2cxi_parser().prog == "nsraw2cxi"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["demo", "--scan", "forty"], 2, "argument --scan: must look like 40x40"),
        (["demo", "--scan", "0x4"], 2, "needs at least 2 points"),
        (["demo", "--rate", "-3"], 2, "argument --rate: must be >= 0 frames/s"),
        (["demo", "--darks", "1"], 2, "argument --darks: must be between 2 and"),
        (["demo", "--scan", "2x2", "--sample-image", "/no/such.png"], 2, "no such file: /no/such.png"),
        (["demo", "--scan", "2x2", "--exposure", "-1"], 2, "argument --exposure: must be > 0 s"),
        (["runs", "--since", "yesterday-ish"], 1, "no catalog at"),
        (["demo", "--adaptive", "--epics"], 1, "--adaptive runs on the in-process beamline; drop --epics"),
        (["demo", "--adaptive", "--pattern", "fermat", "--scan", "6x6"], 1, "--adaptive --pattern fermat needs at least 49 points"),
    ],
)
def test_errors_are_one_clear_line(args, code, message, tmp_path):
    out = _run("ns-bluesky", *args, "--catalog", str(tmp_path / "cat"))
    assert out.returncode == code
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ns-bluesky") and ": error:" in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in out.stderr


def test_runs_lists_raw_and_derived_runs_marked_and_nsraw2cxi_names_the_raw_run_of_a_derived_one(tmp_path, capsys):
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det

    from ns_bluesky.callbacks.derived import DerivedRun
    from ns_bluesky.io.catalog import make_tiled_writer, open_catalog
    from ns_bluesky.io.catalog_layout import processed_of

    cat = open_catalog(tmp_path / "cat")  # served by this process; the commands connect to it
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(make_tiled_writer(cat, batch_size=1))
    (raw,) = RE(bp.count([det], 2), sample_name="star")
    derived = DerivedRun(make_tiled_writer(processed_of(cat), batch_size=1), tmp_path, parent_uid=raw,
                         md={"parent_scan_id": 1, "parent_sample_name": "star"})
    derived.add("stxm", {"frames": 2})
    derived.close()

    def cli(*args, main=None):  # in this process: the catalog's server is this process's own
        from ns_bluesky.apps.cli import main as ns_bluesky

        code = (main or ns_bluesky)([*args, "--catalog", str(tmp_path / "cat")])
        out = capsys.readouterr()
        return code, out.out, out.err

    rows = json.loads(cli("runs", "--json")[1])
    assert [(r["kind"], r["uid"], r["scan_id"]) for r in rows] == [("raw", raw, 1), ("derived", derived.uid, 1)]
    assert rows[1]["parent_uid"] == raw and rows[1]["plan"] == "ns_bluesky_pipeline" and rows[1]["sample"] == "star"
    assert [r["uid"] for r in json.loads(cli("runs", "--kind", "raw", "--json")[1])] == [raw]
    table = cli("runs")[1].splitlines()
    assert table[0].split()[:2] == ["kind", "scan_id"] and table[2].startswith("derived  1") and derived.uid[:8] in table[2]
    code, _, err = cli(derived.uid[:8], "-o", str(tmp_path / "x.cxi"), main=nsraw2cxi_main)
    assert code == 1 and f"export the raw run: nsraw2cxi {raw[:8]}" in err.strip().splitlines()[-1]


def test_nsraw2cxi_on_a_mistyped_catalog_is_one_line_and_creates_nothing(tmp_path):
    out = _run("nsraw2cxi", "nosuchrun", "--catalog", str(tmp_path / "cat"), "-o", str(tmp_path / "x.cxi"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"nsraw2cxi: error: no catalog at {tmp_path / 'cat'} (check --catalog; 'ns-bluesky demo' creates one)"]
    assert not (tmp_path / "cat").exists()


@pytest.mark.slow
def test_demo_end_to_end_then_runs_and_nsraw2cxi(tmp_path):
    cat, out_dir = tmp_path / "cat", tmp_path / "out"
    demo = _run("ns-bluesky", "demo", "--scan", "3x4", "--rate", "0", "--darks", "3", "--refine", "2", "--catalog", str(cat), "--out", str(out_dir), "--quiet")
    assert demo.returncode == 0, demo.stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["exit_status"] == "success"
    assert Path(summary["png"]).stat().st_size > 10_000
    with h5py.File(summary["cxi"], "r") as f:
        assert f["entry_1/data_1/data"].shape == (12, 128, 128)  # the pipeline's cleaned frames
        assert f["entry_1/image_1/data_type"][()] == b"probe" and f["entry_1/image_2/data_type"][()] == b"object"
    runs = _run("ns-bluesky", "runs", "--catalog", str(cat))
    assert runs.returncode == 0
    assert "ptycho_scan" in runs.stdout and "dark_frames" in runs.stdout and summary["raw_uid"][:8] in runs.stdout
    listed = json.loads(_run("ns-bluesky", "runs", "--catalog", str(cat), "--plan", "ptycho_scan", "--json").stdout)
    assert [r["uid"] for r in listed] == [summary["raw_uid"]]
    exported = _run("nsraw2cxi", str(summary["scan_id"]), "--catalog", str(cat), "-o", str(tmp_path / "again.cxi"), "--raw", "--quiet")
    assert exported.returncode == 0, exported.stderr
    with h5py.File(tmp_path / "again.cxi", "r") as f:
        assert f["entry_1/data_1/data"].shape == (12, 1040, 1152)
    # a second demo continues the scan numbering in the same catalog
    again = _run("ns-bluesky", "demo", "--scan", "1x2", "--rate", "20", "--darks", "2", "--refine", "0", "--sample-name", "gold", "--catalog", str(cat), "--out", str(out_dir), "--quiet")
    assert again.returncode == 0, again.stderr  # 20 Hz shortens the default exposure instead of failing
    assert json.loads((out_dir / "summary.json").read_text())["scan_id"] == summary["scan_id"] + 2
    listed = json.loads(_run("ns-bluesky", "runs", "--catalog", str(cat), "--sample", "gold", "--json").stdout)
    raw = [r["uid"] for r in listed if r["kind"] == "raw"]
    assert len(raw) == 2  # darks and scan carry the sample name, and their derived runs (the dark's too) their raw run's
    assert sorted(r["parent_uid"] for r in listed if r["kind"] == "derived") == sorted(raw)


@pytest.mark.slow
def test_ctrl_c_closes_the_run_as_aborted_and_exits_cleanly(tmp_path):
    import signal
    import time

    cat = tmp_path / "cat"
    exe = shutil.which("ns-bluesky", path=str(BIN))
    env = {**os.environ, "NS_BLUESKY_LOG": str(tmp_path / "log.txt")}
    proc = subprocess.Popen(
        [exe, "demo", "--scan", "30x30", "--rate", "10", "--darks", "2", "--catalog", str(cat), "--out", str(tmp_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((cat / "detector").glob("*.h5"))[1:]:
        time.sleep(0.5)  # wait until the scan's own file exists (the darks' is the first)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "ns-bluesky: error: interrupted; open runs were closed with exit_status 'abort'"
    assert "Traceback" not in err
    listed = json.loads(_run("ns-bluesky", "runs", "--catalog", str(cat), "--plan", "ptycho_scan", "--json").stdout)
    assert listed[-1]["status"] == "abort"


def test_sigusr1_appends_every_threads_stack_to_the_log(tmp_path):
    """``kill -USR1`` on a command that seems stuck says where it waits, and the command keeps running."""
    import signal

    from tests.support.epics import IOCProcess

    ioc = IOCProcess(tmp_path)  # a long-running command (the simulated IOC), logging to its own file
    try:
        before = ioc.log_path.read_text(errors="replace")
        os.kill(ioc.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "Current thread" not in (after := ioc.log_path.read_text(errors="replace")) and time.monotonic() < deadline:
            time.sleep(0.1)
        dump = after[len(before):]
        assert "Current thread" in dump and 'File "' in dump, dump[-2000:]
        assert ioc.proc.poll() is None  # a diagnostic, not a stop
    finally:
        ioc.stop()
