"""Channel Access for the tests: loopback ports for the session, and the simulated IOC in a subprocess.

libca reads ``EPICS_CA_ADDR_LIST`` once, when Ophyd is first imported, so ``configure_session`` runs at the
top of tests/conftest.py, before anything imports Ophyd: it reserves a few ports free for UDP and TCP and
points the session's CA client at them only. Each IOC a test starts takes a port of that pool nobody else
uses now and a prefix of its own (a PV name a previous IOC served would be found again only after
libca's search back-off), and is stopped at teardown, however the test ended.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

POOL_SIZE = 3
_ports: list[int] = []
_in_use: set[int] = set()
_prefixes = itertools.count()


def configure_session() -> list[int]:
    """Reserve the session's CA ports and point this process's CA client at them (before Ophyd is imported)."""
    from ns_bluesky.ophyd_devices.ioc.network import client_env, free_ca_ports

    if not _ports:
        _ports.extend(free_ca_ports(POOL_SIZE))
        os.environ.update(client_env(_ports))
    return list(_ports)


def unique_prefix() -> str:
    return f"T{os.getpid() % 10000}x{next(_prefixes)}:"


class IOCProcess:
    """``python -m ns_bluesky.apps.ioc`` on a free port of the session's pool; ``stop`` always ends it."""

    def __init__(self, workdir: Path, *, prefix: str | None = None, description: Path | None = None,
                 rate_hz: float = 0.0, ready_timeout_s: float = 90.0, port: int | None = None):
        """``port``: one of the session's ports (an IOC restarted where the stopped one served)."""
        free = [p for p in _ports if p not in _in_use]
        if port is not None and port not in free:
            raise RuntimeError(f"port {port} is not a free port of the session's pool {_ports}")
        if not free:
            raise RuntimeError(f"all {POOL_SIZE} CA ports of the session are in use; stop an IOC first")
        self.port, self.prefix = port or free[0], prefix or unique_prefix()
        self.rate_hz, self.description = rate_hz, description
        self.log_path = workdir / f"ioc-{self.port}-{self.prefix.strip(':')}.log"
        args = [sys.executable, "-m", "ns_bluesky.apps.ioc", "--port", str(self.port), "--prefix", self.prefix,
                "--rate", str(rate_hz)]
        if description is not None:
            args += ["--description", str(description)]
        env = {**os.environ, "NS_BLUESKY_LOG": str(self.log_path)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        _in_use.add(self.port)
        try:
            self.ready = self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                if not line:
                    break
                try:
                    said = json.loads(line)
                except ValueError:
                    continue
                if said.get("ioc") == "ready":
                    return said
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"the IOC on port {self.port} did not become ready in {timeout_s:g} s; its log ends:\n{tail}")

    def pv(self, part: str) -> str:
        return self.prefix + part

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean-up in the IOC (files closed only as far as they were flushed)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        _in_use.discard(self.port)


def release_channels(objs, timeout_s: float = 30.0) -> None:
    """Destroy Ophyd objects (devices or signals) once Ophyd's own threads are done with their channels.

    Ophyd reads each newly connected channel's metadata on its utility threads, and an EpicsMotor's limit
    callback does a CA get on the monitor thread. A channel cleared under one of those calls is freed memory to
    libca: CI died of a segfault in such a thread in the teardown of a test that destroyed its beamline right
    after making it (reproduced: 3 runs of 3 of make-write-destroy crashed within 150 rounds). So: first take
    every Python callback off the channels, so that no new work for them is queued, then let each dispatcher
    thread finish what it holds, then clear the channels.
    """
    from ophyd import cl
    from ophyd.signal import EpicsSignalBase

    dispatcher = cl.get_dispatcher()
    signals = []
    for obj in objs:
        if isinstance(obj, EpicsSignalBase):
            signals.append(obj)
        elif hasattr(obj, "walk_signals"):
            signals += [w.item for w in obj.walk_signals(include_lazy=False) if isinstance(w.item, EpicsSignalBase)]
    pvs = [pv for sig in signals for pv in (getattr(sig, "_read_pv", None), getattr(sig, "_write_pv", None))
           if pv is not None]
    for pv in pvs:
        pv.clear_callbacks()
    _forget_queued(dispatcher, {pv.pvname for pv in pvs})
    _wait_for_ophyd_threads(dispatcher, timeout_s)
    for obj in objs:
        try:
            obj.destroy()
        except Exception:  # noqa: BLE001 - a channel already gone with its IOC
            pass


def _forget_queued(dispatcher, pvnames: set[str]) -> None:
    """Take out of Ophyd's queues the work not yet started for these channels: a metadata read waits out its
    connection timeout on a channel whose IOC is gone, and a hundred of them held the utility threads for minutes."""
    for q in {id(t.queue): t.queue for t in dispatcher.threads.values()}.values():
        with q.mutex:
            kept = [item for item in q.queue if item[2].get("pvname") not in pvnames]
            q.queue.clear()
            q.queue.extend(kept)


def _wait_for_ophyd_threads(dispatcher, timeout_s: float) -> None:
    """Return when Ophyd's dispatcher threads have nothing left to do with the channels.

    Work moves between them (a connection callback on the metadata thread queues a metadata read for the utility
    threads, whose result goes back to a named thread), so the threads are drained in rounds until a round finds
    every queue empty. A named thread owns its queue: a marker at its end runs after everything before it. The
    utility threads share one queue: as many markers as threads, each holding its thread until all have arrived,
    so that each has put down what it was doing.
    """
    import threading

    deadline = time.monotonic() + timeout_s
    threads = list(dispatcher.threads.values())
    utility = [t for t in threads if t.queue is dispatcher._utility_queue]
    named = [t for t in threads if t.queue is not dispatcher._utility_queue]

    def left() -> float:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ophyd's dispatcher threads still busy after {timeout_s:g} s")
        return deadline - time.monotonic()

    while True:
        for thread in named:
            done = threading.Event()
            thread.queue.put((done.set, (), {}))
            if not done.wait(left()):
                left()
        barrier = threading.Barrier(len(utility) + 1, timeout=left())
        for _ in utility:
            dispatcher.schedule_utility_task(_hold, barrier)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            left()
            raise RuntimeError("Ophyd's utility threads did not all come free") from None
        if all(t.queue.empty() for t in threads):
            return


def _hold(barrier) -> None:
    import threading

    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
