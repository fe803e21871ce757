"""``ns-bluesky queue start|stop``: the beamline's queue server, the NSLS-II way, started and stopped by one command.

Why: at NSLS-II scans are queued to a bluesky-queueserver RE Manager, from the shell, the screens or
a web page, and run one after the other in a worker process that loaded the beamline's profile. Here
``queue start`` does every step a beamline scientist would otherwise do by hand: a private Redis on
127.0.0.1 (a free port, its data in the queue directory), a CURVE key pair for the manager's control
socket (0600 files; the private key reaches the manager through its environment only), the user
group permissions (the three ptychography plans and the profile's devices), the manager on
127.0.0.1 with the installed IPython profile's startup files as its worker environment (RunEngine,
catalog writer, pipeline subscriptions: a queued scan lands in ``raw``, its derived run in
``processed``), and the environment opened, which writes ``existing_plans_and_devices.yaml``.
Everything runs in two process groups that ``queue stop`` (or a failed start) ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..errors import QueueError
from ..io.queue_client import (
    PLAN_DEVICES,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    STATE_FILE,
    USER_GROUP,
    QueueClient,
    QueueState,
    write_private,
)
from ..stream.config import free_loopback_ports

EXISTING_FILE = "existing_plans_and_devices.yaml"
PERMISSIONS_FILE = "user_group_permissions.yaml"
REDIS_PREFIX = "ns_bluesky"


def permissions() -> dict:
    """Who may queue what: the ``primary`` group (the shell's and the panel's) gets the ptychography plans and
    every device of the profile; ``root`` (queueserver's administrators' group) everything but private names."""
    plans = [f":^{name}$" for name in PLAN_DEVICES]
    return {"user_groups": {
        "root": {"allowed_plans": [None], "forbidden_plans": [":^_"], "allowed_devices": [None],
                 "forbidden_devices": [":^_:?.*"], "allowed_functions": [None], "forbidden_functions": [":^_"]},
        USER_GROUP: {"allowed_plans": plans, "forbidden_plans": [None], "allowed_devices": [":?.*"],
                     "forbidden_devices": [":^_:?.*"], "allowed_functions": [None], "forbidden_functions": [":^_"]},
    }}


def _alive(pid: int, name: str) -> bool:
    """Whether ``pid`` still runs ``name`` (a pid from a state file may since belong to another program)."""
    try:
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _end_group(pid: int, name: str, timeout_s: float) -> None:
    """SIGTERM the process group ``pid`` leads (it was started in a session of its own), SIGKILL after ``timeout_s``."""
    if not _alive(pid, name):
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                    return
            except ChildProcessError:
                if not _alive(pid, name):
                    return
            time.sleep(0.05)


def _group_size(pgid: int) -> int:
    """How many live processes are in process group ``pgid`` (from /proc; zombies not counted)."""
    n = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        n += len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z"  # an exited worker not yet reaped
    return n


def _last_line(path: Path, match: tuple[str, ...] = ("Error", "error", "Exception")) -> str:
    """The last log line that names an error (else the last line): what a one-line failure points at."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    hits = [line for line in lines if any(m in line for m in match)]
    return (hits or lines or ["(empty log)"])[-1][:300]


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(queue_dir: Path, port: int, logs: Path) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise QueueError("the queue server keeps its queue in Redis, and redis-server is not installed: "
                         "apt-get install redis-server (Debian/Ubuntu), dnf install redis, or brew install redis")
    data = queue_dir / "redis"
    data.mkdir(mode=0o700, exist_ok=True)
    conf = queue_dir / "redis.conf"
    write_private(conf, "\n".join([
        "bind 127.0.0.1", f"port {port}", "protected-mode yes", "daemonize no", f"dir {data}",
        "dbfilename queue.rdb", "save 60 1", "appendonly no", f"logfile {logs / 'redis.log'}", "",
    ]))
    proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=queue_dir)
    deadline = time.monotonic() + 15
    while not _redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _end_group(proc.pid, "redis", 2)
            raise QueueError(f"Redis did not start on 127.0.0.1:{port}: {_last_line(logs / 'redis.log')}")
        time.sleep(0.05)
    return proc


def _manager_command(queue_dir: Path, startup_dir: Path, control_port: int, info_port: int, redis_port: int) -> list[str]:
    exe = Path(sys.executable).with_name("start-re-manager")
    return [
        str(exe) if exe.exists() else shutil.which("start-re-manager") or "start-re-manager",
        "--zmq-control-addr", f"tcp://127.0.0.1:{control_port}",
        "--zmq-info-addr", f"tcp://127.0.0.1:{info_port}", "--zmq-publish-console", "OFF",
        "--startup-dir", str(startup_dir),
        "--existing-plans-devices", str(queue_dir / EXISTING_FILE),
        "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
        "--user-group-permissions", str(queue_dir / PERMISSIONS_FILE),
        "--user-group-permissions-reload", "ON_STARTUP",
        "--redis-addr", f"127.0.0.1:{redis_port}", "--redis-name-prefix", REDIS_PREFIX,
        "--use-ipython-kernel", "OFF", "--console-output", "ON",
    ]


def _running(queue_dir: Path) -> QueueState | None:
    """The state of a manager that answers, None when none does (a stale state file is then removed)."""
    if not (queue_dir / STATE_FILE).exists():
        return None
    try:
        client = QueueClient(queue_dir, timeout_s=1.0)
    except QueueError:
        return None
    try:
        client.status()
        return client.state
    except QueueError:
        stale = client.state
        for pid, name in ((stale.manager_pid, "start-re-manager"), (stale.redis_pid, "redis")):
            _end_group(pid, name, 5)
        (queue_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    finally:
        client.close()


def start_queue(queue_dir: Path, *, catalog: str, startup_dir: Path, timeout_s: float = 180.0, say=print) -> QueueState:
    """Redis, the RE Manager, and its worker environment opened with the profile; returns their state.

    Every process started is ended again when a later step fails (one :class:`QueueError` line, the log named).
    """
    queue_dir = Path(queue_dir).resolve()
    queue_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(queue_dir, 0o700)
    running = _running(queue_dir)
    if running is not None:
        raise QueueError(f"a queue server already runs from {queue_dir} (pid {running.manager_pid}, "
                         f"{running.control_addr}): 'ns-bluesky queue stop' first")
    if not (startup_dir / "00-base.py").exists():
        raise QueueError(f"no beamline profile in {startup_dir}: 'ns-bluesky profile install' first")
    logs = queue_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)

    import zmq

    public, private = zmq.curve_keypair()
    write_private(queue_dir / PRIVATE_KEY_FILE, private.decode())
    write_private(queue_dir / PUBLIC_KEY_FILE, public.decode())
    write_private(queue_dir / PERMISSIONS_FILE, yaml.safe_dump(permissions(), sort_keys=False))
    (queue_dir / EXISTING_FILE).unlink(missing_ok=True)  # written again from the profile when the environment opens

    redis_port, control_port, info_port = free_loopback_ports(3)
    redis = _start_redis(queue_dir, redis_port, logs)
    manager = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QSERVER_")}
        env.update({"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": private.decode(), "NS_BLUESKY_CATALOG": str(catalog),
                    "PYTHONUNBUFFERED": "1"})
        with open(logs / "manager.log", "ab") as log:
            manager = subprocess.Popen(_manager_command(queue_dir, startup_dir, control_port, info_port, redis_port),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=queue_dir, env=env)
        state = QueueState(control_addr=f"tcp://127.0.0.1:{control_port}", manager_pid=manager.pid,
                           redis_pid=redis.pid, redis_port=redis_port, catalog=str(catalog),
                           startup_dir=str(startup_dir), started=time.time())
        state.save(queue_dir)
        _open_environment(queue_dir, manager, logs / "manager.log", timeout_s, say)
        return state
    except BaseException:
        if manager is not None:
            _end_group(manager.pid, "start-re-manager", 10)
        _end_group(redis.pid, "redis", 5)
        (queue_dir / STATE_FILE).unlink(missing_ok=True)
        raise


def _open_environment(queue_dir: Path, manager: subprocess.Popen, log: Path, timeout_s: float, say) -> None:
    deadline = time.monotonic() + timeout_s
    client = QueueClient(queue_dir, timeout_s=2.0)
    try:
        while True:  # the manager answers
            if manager.poll() is not None:
                raise QueueError(f"the RE Manager ended at start (exit status {manager.returncode}): {_last_line(log)} "
                                 f"(log: {log})")
            try:
                client.status()
                break
            except QueueError:
                if time.monotonic() > deadline:
                    raise QueueError(f"the RE Manager did not answer in {timeout_s:g} s (log: {log})") from None
        say("queue: RE Manager answers; opening its worker environment (the beamline profile) ...")
        client.call("to open the environment", "environment_open")
        opening_since = time.monotonic()
        while True:
            status = client.status()
            if status.get("worker_environment_exists") and status.get("manager_state") == "idle":
                return
            idle = status.get("manager_state") == "idle" and not status.get("worker_environment_exists")
            if idle and time.monotonic() - opening_since > 2.0:  # back to idle without an environment: it failed
                raise QueueError(f"the worker environment did not open: {_last_line(log)} (log: {log})")
            if manager.poll() is not None:
                raise QueueError(f"the RE Manager ended while opening its environment: {_last_line(log)} (log: {log})")
            if time.monotonic() > deadline:
                raise QueueError(f"the worker environment did not open in {timeout_s:g} s (log: {log})")
            time.sleep(0.2)
    finally:
        client.close()


def stop_queue(queue_dir: Path, *, force: bool = False, timeout_s: float = 60.0, say=print) -> QueueState:
    """Close the worker environment (the profile's pipeline and catalog end cleanly), stop the manager and
    Redis (which saves the queue and history for the next start). A running plan is refused unless ``force``."""
    queue_dir = Path(queue_dir).resolve()
    state = QueueState.load(queue_dir)
    try:
        client = QueueClient(queue_dir, timeout_s=2.0)
    except QueueError:
        client = None
    try:
        status = client.status() if client is not None else None
    except QueueError:
        status = None  # it does not answer: ended by signal below
    try:
        if status is not None:
            if status.get("manager_state") not in ("idle", None) and not force:
                raise QueueError(f"a plan is {status.get('manager_state')}: pause and abort it first "
                                 "('ns-bluesky queue abort'), or stop with --force")
            if status.get("worker_environment_exists"):
                say("queue: closing the worker environment ...")
                name = "environment_destroy" if force and status.get("manager_state") != "idle" else "environment_close"
                client.call("to close the environment", name)
                deadline = time.monotonic() + timeout_s
                while client.status().get("worker_environment_exists") and time.monotonic() < deadline:
                    time.sleep(0.2)
                # the worker then ends the profile's pipeline and catalog (its exit hooks) before it exits; the
                # manager does not wait for that (0.5 s), so we do: until only its watchdog and manager are left
                while _group_size(state.manager_pid) > 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
            try:
                client.call("to stop", "send_request", method="manager_stop", params={"option": "safe_off"})
            except QueueError:
                pass  # it is ended by signal below
            deadline = time.monotonic() + 20
            while _alive(state.manager_pid, "start-re-manager") and time.monotonic() < deadline:
                try:
                    os.waitpid(state.manager_pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.1)
    finally:
        if client is not None:
            client.close()
        _end_group(state.manager_pid, "start-re-manager", 10)
        _end_group(state.redis_pid, "redis", 10)
        (queue_dir / STATE_FILE).unlink(missing_ok=True)
    return state
