"""What the screens read: the pipeline's latest results and status, kept by two threads.

Every ``nsstream://`` channel of a process reads the same hub (one per pipeline
configuration), so a screen with forty widgets opens one subscription to the results
port and one status poll, not forty. The threads only fill dictionaries; the GUI
thread polls them (``get``) and never waits on a socket, so a slow or absent pipeline
cannot freeze a screen.

Addresses (``nsstream://`` + one of these):

``<stage>/<name>``
    the latest array or scalar of that stage's results (``recon/object_phase``,
    ``stxm/transmission``, ``clean/photons``, ``clean/pattern``, ``clean/raw_preview``);
    ``recon/phase``, ``recon/amplitude``, ``recon/probe`` are the object's phase and
    amplitude and the probe's amplitude.
``<stage>/<scalar>/history``
    that scalar over the current run, as a waveform (the error curve is
    ``recon/residual/history``).
``start/<field>``, ``end_of_run/<field>``
    the latest run's start document and end-of-run counts (``start/scan_id``).
``status/<module>/<field>``, ``status/<field>``, ``status/state``
    the handler's status, polled once a second (``status/frame/rate`` is the frame
    module's items per second, ``status/frame/workers`` its live worker count).
``log/tail``
    the last lines of what happened: runs started and ended, module errors, the
    pipeline going away and coming back.
``control/<command>`` (writable)
    ``start``, ``stop``, ``abort``, ``reset`` (any value sends the command),
    ``scale/<module>`` (the value is the worker count; it reads the wanted count);
    ``control/reply`` says what the last command did.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ns_bluesky.stream.client import ControlClient
from ns_bluesky.stream.config import PipelineConfig, load_config
from ns_bluesky.stream.protocol import Message, start_document
from ns_bluesky.stream.subscriber import ResultsSubscriber

log = logging.getLogger(__name__)

#: what a screen calls a result and the name the modules publish it under
ALIASES = {
    "recon/phase": "recon/object_phase",
    "recon/amplitude": "recon/object_amplitude",
    "recon/probe": "recon/probe_amplitude",
    "stxm/probe": "stxm/probe_amplitude",
}
STATUS_ALIASES = {"rate": "items_per_s"}
HISTORY = 20000  # points of a scalar's history kept per run
LOG_LINES = 12
COMMANDS = ("start", "stop", "abort", "reset")
ALIVE_FOR_S = 3.0  # a pipeline that answered a status poll this recently is up


def _displayable(array: np.ndarray) -> np.ndarray:
    """A copy a screen can colour: NaN (an STXM pixel not measured yet) becomes the image's lowest value."""
    out = np.array(array)
    if out.dtype.kind == "f":
        bad = ~np.isfinite(out)
        if bad.all():
            out[:] = 0
        elif bad.any():
            out[bad] = out[~bad].min()
    return out


class StreamHub(ResultsSubscriber):
    """``StreamHub(cfg)``: latest values by address, ``version`` bumped on each change."""

    def __init__(self, cfg: PipelineConfig, *, config_path: str | None = None, poll_s: float = 1.0):
        self.config_path, self.poll_s = config_path, poll_s
        self._lock = threading.Lock()
        self._values: dict[str, tuple[int, Any]] = {}
        self._histories: dict[str, deque] = {}
        self._history_run: dict[str, str] = {}
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._version = 0
        self.last_ok = 0.0
        self._was_up: bool | None = None
        for command in COMMANDS:  # a PyDM button sends only once its channel has a value
            self._set(f"control/{command}", 0)
        self._set("control/reply", "")
        super().__init__(cfg, name="nsstream-results")
        self._poller = threading.Thread(target=self._poll_status, name="nsstream-status", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------ reading
    @property
    def alive(self) -> bool:
        return bool(self._was_up) and time.monotonic() - self.last_ok < ALIVE_FOR_S  # the last poll, and not long ago

    def get(self, address: str, since: int = -1) -> tuple[int, Any]:
        """``(version, value)``; version 0 and ``None`` for what has not come yet, and ``None`` when
        the version is still ``since`` (a 10 Hz poll of a long curve copies it only when it grew)."""
        address = ALIASES.get(address, address)
        if address.endswith("/history"):
            with self._lock:
                hist = self._histories.get(address[: -len("/history")])
                version = self._values.get(address, (0, None))[0]
                if hist is None or version == since:
                    return version, None
                return version, np.asarray(hist, dtype=np.float64)
        with self._lock:
            return self._values.get(address, (0, None))

    def _set(self, address: str, value: Any) -> None:
        self._version += 1
        self._values[address] = (self._version, value)

    def _note(self, line: str) -> None:
        with self._lock:
            self._log.append(time.strftime("%H:%M:%S ") + line)
            self._set("log/tail", "\n".join(self._log))

    # ------------------------------------------------------------------ results
    def _on_message(self, msg: Message) -> None:
        stage = msg.stage if msg.kind == "result" else msg.kind
        if msg.kind == "start":
            doc = start_document(msg)
            with self._lock:
                for key, value in doc.items():
                    if isinstance(value, (int, float, str, bool)):
                        self._set(f"start/{key}", value)
            self._note(f"run {doc.get('scan_id', '?')} started ({doc.get('purpose', '?')}, "
                       f"{doc.get('num_points', '?')} points, sample {doc.get('sample_name', '?')})")
            return
        if msg.kind == "end_of_run":
            with self._lock:
                for key, value in msg.meta.items():
                    if isinstance(value, (int, float, str, bool)):
                        self._set(f"end_of_run/{key}", value)
            m = msg.meta
            self._note(f"run {msg.run[:8]} ended: {m.get('frames')} frames, missing {m.get('missing', 0)}, "
                       f"duplicates {m.get('duplicates', 0)}{', ABORTED' if m.get('aborted') else ''}")
            return
        if msg.kind == "error":
            self._note(f"error in {msg.stage} (run {msg.run[:8]}, seq {msg.seq}): {msg.meta.get('error')}")
            return
        if msg.kind != "result":
            return
        scalars = msg.meta.get("scalars") or {}
        with self._lock:
            for name, array in msg.arrays.items():
                self._set(f"{stage}/{name}", _displayable(array))
            for name, value in scalars.items():
                key = f"{stage}/{name}"
                self._set(key, value)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if self._history_run.get(key) != msg.run:
                        self._history_run[key] = msg.run
                        self._histories[key] = deque(maxlen=HISTORY)
                    self._histories[key].append(float(value))
                    self._set(f"{key}/history", None)  # bumps the history's version

    # ------------------------------------------------------------------ status
    def _poll_status(self) -> None:
        client = ControlClient(self.cfg, timeout_s=max(self.poll_s, 0.5))
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status = client.status()
            except Exception as exc:  # absent, or refusing: either way the screens show it down
                self._status_down(exc)
            else:
                self.last_ok = time.monotonic()
                self._status_up(status)
            self._stop.wait(max(0.0, self.poll_s - (time.monotonic() - t0)))

    def _status_up(self, status: dict) -> None:
        with self._lock:
            self._set("status/state", "running")
            for key in ("pid", "uptime_s"):
                self._set(f"status/{key}", status.get(key))
            for key, value in (status.get("counts") or {}).items():
                self._set(f"status/counts/{key}", value)
            self._set("status/malformed", sum((status.get("malformed") or {}).values()))
            for name, mod in status.get("modules", {}).items():
                for key, value in mod.items():
                    if key == "workers":
                        self._set(f"status/{name}/workers", len(value))
                    elif isinstance(value, (int, float, str)):
                        self._set(f"status/{name}/{key}", value)
                for alias, key in STATUS_ALIASES.items():
                    self._set(f"status/{name}/{alias}", mod.get(key))
                self._set(f"control/scale/{name}", mod.get("wanted_workers"))
        if self._was_up is not True:
            self._note(f"pipeline up (handler pid {status.get('pid')})")
        self._was_up = True

    def _status_down(self, exc: Exception) -> None:
        if self._was_up is not False:
            with self._lock:
                self._set("status/state", "down")
            self._note(f"pipeline down: {exc}")
        self._was_up = False

    # ------------------------------------------------------------------ control
    def command(self, address: str, value: Any) -> None:
        """Send ``control/...`` on a thread of its own; the reply lands in ``control/reply``."""
        threading.Thread(target=self._command, args=(address, value), name="nsstream-command", daemon=True).start()

    def _command(self, address: str, value: Any) -> None:
        parts = address.split("/")[1:]
        try:
            if parts == ["start"]:
                reply = self._start_pipeline()
            elif parts[0] in COMMANDS and len(parts) == 1:
                out = ControlClient(self.cfg, timeout_s=5.0)(parts[0])
                extra = f": dropped {out['dropped']} items" if "dropped" in out else ""
                reply = f"{parts[0]}: done{extra}"
            elif parts[0] == "scale" and len(parts) == 2:
                n = int(value)
                ControlClient(self.cfg, timeout_s=5.0)("scale", counts={parts[1]: n})
                reply = f"scale: {parts[1]} to {n} workers"
            else:
                reply = f"unknown control address {address!r}"
        except Exception as exc:  # shown to the operator, never raised into Qt
            reply = f"{'/'.join(parts)} failed: {exc}"
        with self._lock:
            self._set("control/reply", reply)
        self._note(reply)

    def _start_pipeline(self) -> str:
        if self.alive:
            return "start: a pipeline is already running"
        cmd = [sys.executable, "-m", "ns_bluesky.apps.cli", "pipeline", "start"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode:
            return f"start failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
        return "start: pipeline ready"

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)
        self._poller.join(timeout_s)


_hubs: dict[str, StreamHub] = {}
_hubs_lock = threading.Lock()


def hub(config_path: str | None = None) -> StreamHub:
    """The process's hub for ``config_path`` (default: ``$NS_BLUESKY_PIPELINE``, else the default ports)."""
    path = config_path or os.environ.get("NS_BLUESKY_PIPELINE") or None
    with _hubs_lock:
        if path not in _hubs:
            _hubs[path] = StreamHub(load_config(path), config_path=path)
        return _hubs[path]


def close_hubs() -> None:
    with _hubs_lock:
        for h in _hubs.values():
            h.close()
        _hubs.clear()
