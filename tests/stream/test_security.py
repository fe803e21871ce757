"""Only the pipeline's owner gets in: another user, or the same user without the keys, gets nothing and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ns_bluesky.stream.security import generate, socket_dir
from tests.support.pipeline import ECHO, send_run

INTRUDER = Path(__file__).parents[1] / "support" / "intruder.py"
PORTS = ("control", "ingest", "workers", "results")


def _endpoints(cfg) -> dict[str, list[str]]:
    """Every way in: the configured endpoint, and plain TCP on loopback at the same port numbers."""
    ports = dict(zip(PORTS, (cfg.control_port, cfg.ingest_port, cfg.worker_port, cfg.results_port), strict=True))
    return {name: sorted({cfg.address(port, connect=True), f"tcp://127.0.0.1:{port}"}) for name, port in ports.items()}


def _intrude(cfg, *, user: str | None = None) -> dict:
    """Run the intruder (as ``user``: a copy of it in a directory that user can read) and return what it saw."""
    cmd = [sys.executable, str(INTRUDER), json.dumps(_endpoints(cfg)), "2.0"]
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as d:
        if user is not None:
            os.chmod(d, 0o755)
            script = Path(d) / "intruder.py"
            shutil.copy(INTRUDER, script)
            os.chmod(script, 0o644)
            site = next(p for p in sys.path if p.endswith("site-packages"))  # pyzmq, readable by everyone
            cmd = [shutil.which("runuser"), "-u", user, "--", "env", f"PYTHONPATH={site}", f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                   str(script), *cmd[2:]]
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=d)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_untouched(pipe, before: dict) -> None:
    """Still running (the stop was not obeyed), the same workers, nothing ingested from the intruder; the owner is served."""
    after = pipe.control.status()
    assert [w["pid"] for w in after["modules"]["echo"]["workers"]] == [w["pid"] for w in before["modules"]["echo"]["workers"]]
    assert after["counts"].get("ingested", 0) == before["counts"].get("ingested", 0)
    assert "intruder" not in after["runs"]
    client = pipe.ingest()
    send_run(client, "owner-run", 6)
    client.flush(30)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("owner-run"), timeout_s=60)
    assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == "owner-run") == list(range(6))
    end = next(m for m in msgs if m.kind == "end_of_run" and m.run == "owner-run")
    assert end.meta["frames"] == 6
    client.close()


def _can_run_as_nobody() -> str | None:
    if os.geteuid() != 0:
        return f"runs as uid {os.geteuid()}, not root: cannot become another user with runuser"
    if shutil.which("runuser") is None:
        return "no runuser on this machine"
    if not Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}").exists():
        return f"no /usr/bin/python{sys.version_info.major}.{sys.version_info.minor} for the other user to run pyzmq with"
    return None


def test_a_keyless_pipeline_listens_on_no_tcp_port_and_its_socket_directory_is_private(make_pipeline):
    pipe = make_pipeline(ECHO.format(workers=1, delay=0))
    d = socket_dir(pipe.cfg)
    st = d.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    for port in (pipe.cfg.control_port, pipe.cfg.ingest_port, pipe.cfg.worker_port, pipe.cfg.results_port):
        assert stat.S_ISSOCK((d / str(port)).stat().st_mode)
        with pytest.raises(ConnectionRefusedError):  # nothing on TCP: not even the loopback interface
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    pipe.stop()
    assert not [p for p in (pipe.cfg.control_port, pipe.cfg.ingest_port, pipe.cfg.worker_port, pipe.cfg.results_port) if (d / str(p)).exists()]


def test_the_intruder_as_the_owner_is_answered_on_every_socket(make_pipeline):
    """The probe itself works: run by the pipeline's owner it registers, submits, subscribes and stops the pipeline."""
    pipe = make_pipeline(ECHO.format(workers=1, delay=0))
    seen = _intrude(pipe.cfg)
    assert all(seen["received"][name] > 0 for name in PORTS), seen
    pipe.proc.wait(10)  # it obeyed the stop


@pytest.mark.parametrize("keys", [False, True], ids=["keyless-ipc", "curve-tcp"])
def test_another_user_gets_nothing_and_changes_nothing(make_pipeline, tmp_path, keys):
    why = _can_run_as_nobody()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    extra = {"curve_keys": str(generate(tmp_path / "keys"))} if keys else {}
    pipe = make_pipeline(ECHO.format(workers=1, delay=0), **extra)
    before = pipe.control.status()
    seen = _intrude(pipe.cfg, user="nobody")
    assert seen["received"] == dict.fromkeys(PORTS, 0), seen
    _assert_untouched(pipe, before)


def test_the_same_user_without_the_keys_gets_nothing_and_changes_nothing(make_pipeline, tmp_path):
    pipe = make_pipeline(ECHO.format(workers=1, delay=0), curve_keys=str(generate(tmp_path / "keys")))
    before = pipe.control.status()
    seen = _intrude(pipe.cfg)
    assert seen["received"] == dict.fromkeys(PORTS, 0), seen
    _assert_untouched(pipe, before)


def test_a_socket_directory_of_someone_else_or_open_to_others_is_refused(tmp_path):
    from ns_bluesky.errors import ParameterError
    from ns_bluesky.stream.config import PipelineConfig

    mine = tmp_path / "open"
    mine.mkdir(mode=0o777)
    os.chmod(mine, 0o777)
    socket_dir(PipelineConfig(socket_dir=str(mine)))
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700  # ours: tightened
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ParameterError, match="belongs to uid 65534"):
            socket_dir(PipelineConfig(socket_dir=str(theirs)))
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ParameterError, match="not a directory"):
        socket_dir(PipelineConfig(socket_dir=str(link)))


def test_key_files_are_private_and_a_readable_secret_is_refused(tmp_path):
    from ns_bluesky.errors import ParameterError
    from ns_bluesky.stream.security import client_keys

    d = generate(tmp_path / "keys")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "client.key_secret").stat().st_mode) == 0o600
    os.chmod(d / "client.key_secret", 0o644)
    with pytest.raises(ParameterError, match="readable by others"):
        client_keys(d)
