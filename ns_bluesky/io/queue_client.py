"""The client side of the beamline's queue server (a bluesky-queueserver RE Manager): where it is, how to
talk to it, and what its answers mean, for the ``ns-bluesky queue`` commands and the PyDM queue panel alike.

Why here: ``ns-bluesky queue start`` (:mod:`ns_bluesky.apps.queue_server`) leaves its state in one
directory (``$NS_BLUESKY_QUEUE_DIR``, else the user's data directory): ``queue.json`` says where the
manager's control socket is, ``control.key.pub`` holds the CURVE public key that socket needs (0600,
never on a command line or in a log). Both the shell and the screens read that directory and talk
through :class:`QueueClient`, which turns every failure into one :class:`~ns_bluesky.errors.QueueError`
line: the manager is not running, it did not answer, or it refused a plan and why.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

from ..errors import QueueError

QUEUE_DIR_ENV = "NS_BLUESKY_QUEUE_DIR"
STATE_FILE = "queue.json"
PRIVATE_KEY_FILE = "control.key"
PUBLIC_KEY_FILE = "control.key.pub"
USER_GROUP = "primary"  # queueserver's default group of REManagerAPI; user_group_permissions.yaml defines it

#: the plans the queue offers, with the device parameters each takes first (filled in when not given)
PLAN_DEVICES: dict[str, tuple[str, ...]] = {
    "ptycho_scan": ("det", "stage", "shutter"),
    "dark_frames": ("det", "shutter"),
    "adaptive_ptycho": ("det", "stage", "shutter"),
}
#: the profile's device for each device parameter
DEVICE_NAMES = {"det": "fccd", "stage": "stage", "shutter": "shutter"}


def default_queue_dir() -> Path:
    """``$NS_BLUESKY_QUEUE_DIR``, else ``~/.local/share/ns-bluesky/queue``."""
    env = os.environ.get(QUEUE_DIR_ENV)
    return Path(env) if env else platformdirs.user_data_path("ns-bluesky") / "queue"


@dataclass
class QueueState:
    """What ``queue start`` left in ``queue.json``: the processes it started and where they listen."""

    control_addr: str
    manager_pid: int
    redis_pid: int
    redis_port: int
    catalog: str
    startup_dir: str
    started: float

    def save(self, queue_dir: Path) -> None:
        path = Path(queue_dir) / STATE_FILE
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, queue_dir: Path) -> QueueState:
        path = Path(queue_dir) / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise QueueError(f"no queue server is running (nothing in {queue_dir}): start one with "
                             "'ns-bluesky queue start'") from None
        except (ValueError, TypeError) as exc:
            raise QueueError(f"{path} is damaged ({exc}): stop what runs with 'ns-bluesky queue stop' and start "
                             "again") from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (created 0600, never world-readable for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_private(path: Path) -> str:
    """The content of a secret file, refused when others may read it (the fix: chmod 600)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise QueueError(f"{path} is missing: the queue server's key; restart it with 'ns-bluesky queue stop' "
                         "then 'ns-bluesky queue start'") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise QueueError(f"{path} may be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}")
    return Path(path).read_text().strip()


# ------------------------------------------------------------------------------------------------ plan items


def parse_value(text: str) -> Any:
    """A parameter's value as typed in a shell or a form: ``3`` -> 3, ``0.5`` -> 0.5, ``3,3`` -> [3, 3],
    ``[1, 2]`` / ``{"a": 1}`` as JSON, ``true``/``false``/``none``, anything else a string."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if s[:1] in "[{":
        try:
            return json.loads(s)
        except ValueError:
            try:
                return ast.literal_eval(s)
            except (ValueError, SyntaxError):
                raise QueueError(f"cannot read {text!r}: write a list as 3,3 or [3, 3], a dict as JSON") from None
    if "," in s:
        return [parse_value(part) for part in s.split(",") if part.strip()]
    for kind in (int, float):
        try:
            return kind(s)
        except ValueError:
            pass
    return s


def parse_params(words: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """``["fccd", "shape=3,3", "overlap=0.5"]`` -> ``(["fccd"], {"shape": [3, 3], "overlap": 0.5})``."""
    args, kwargs = [], {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            if key in kwargs:
                raise QueueError(f"{key} is given twice")
            kwargs[key] = parse_value(value)
        elif kwargs:
            raise QueueError(f"{word!r} comes after key=value parameters: give positional values first")
        else:
            args.append(parse_value(word))
    return args, kwargs


def plan_item(name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> dict:
    """The queue item for ``name``: the profile's devices (fccd, stage, shutter) in the device parameters not
    given, so ``plan_item("ptycho_scan", kwargs={"shape": [3, 3]})`` is the scan of the short form."""
    args, kwargs = list(args or []), dict(kwargs or {})
    devices = PLAN_DEVICES.get(name, ())
    given = len(args)
    filled = [DEVICE_NAMES[p] for p in devices[given:] if p not in kwargs]
    if len(filled) == len(devices) - given:  # fill positionally only while no device was passed by name
        args += filled
    else:
        for p in devices[given:]:
            kwargs.setdefault(p, DEVICE_NAMES[p])
    return {"name": name, "args": args, "kwargs": kwargs, "item_type": "plan"}


def refusal_reason(msg: str) -> str:
    """The manager's refusal in one line: the parameter and what is wrong with it, without the echo of the item.

    ``"Plan validation failed: 1 validation error for Model\\nshape\\n  'str' instances ... [type=...]\\nPlan: ..."``
    -> ``"shape: 'str' instances ..."``."""
    text = re.sub(r"^(Request failed: )?", "", str(msg)).split("\nPlan:")[0]
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if any("validation error" in line for line in lines):
        i = next(i for i, line in enumerate(lines) if "validation error" in line)
        if i + 2 < len(lines):
            what = re.sub(r"\s*\[type=.*$", "", lines[i + 2].strip())
            return f"{lines[i + 1].strip()}: {what}"
    first = lines[0] if lines else "refused"
    return re.sub(r"^(Failed to add an item: )?(Plan validation failed: )?", "", first)


# ------------------------------------------------------------------------------------------------ the client


class QueueClient:
    """The RE Manager of a queue directory, through bluesky-queueserver-api (ZeroMQ with CURVE).

    Every call returns the manager's answer or raises :class:`QueueError` in one line. Blocking (at most
    ``timeout_s`` per request): the panel calls it from a worker thread, never from the Qt loop.
    """

    def __init__(self, queue_dir: str | os.PathLike | None = None, *, timeout_s: float = 3.0):
        try:
            from bluesky_queueserver_api.zmq import REManagerAPI
        except ImportError:
            raise QueueError("the queue commands need bluesky-queueserver-api: pip install 'ns-bluesky[queue]'") from None

        self.queue_dir = Path(queue_dir) if queue_dir is not None else default_queue_dir()
        self.state = QueueState.load(self.queue_dir)
        public_key = read_private(self.queue_dir / PUBLIC_KEY_FILE)
        self.api = REManagerAPI(zmq_control_addr=self.state.control_addr, zmq_public_key=public_key,
                                timeout_recv=timeout_s, timeout_send=timeout_s)

    def call(self, what: str, api_method: str, *args, **kwargs):
        """``self.api.<api_method>(*args, **kwargs)``; a timeout or refusal becomes one QueueError line naming ``what``."""
        from bluesky_queueserver_api.comm_base import RequestFailedError, RequestTimeoutError

        try:
            return getattr(self.api, api_method)(*args, **kwargs)
        except RequestTimeoutError:
            raise QueueError(f"no queue server answers at {self.state.control_addr} (pid {self.state.manager_pid}, "
                             f"state in {self.queue_dir}): start one with 'ns-bluesky queue start'") from None
        except RequestFailedError as exc:
            raise QueueError(f"the queue server refused {what}: {refusal_reason(str(exc))}") from None

    def status(self) -> dict:
        return self.call("the status request", "status", reload=True)

    def add(self, name: str, args: list | None = None, kwargs: dict | None = None) -> dict:
        """Add a plan at the end of the queue; refused (QueueError with the reason) before it ever runs when
        its parameters do not fit the plan's signature."""
        from bluesky_queueserver_api import BPlan

        item = plan_item(name, args, kwargs)
        reply = self.call(name, "item_add", BPlan(item["name"], *item["args"], **item["kwargs"]))
        return reply["item"]

    def queue(self) -> tuple[list[dict], dict | None]:
        """The queued items and the running one (None when none runs; it is no longer in the queue)."""
        reply = self.call("the queue request", "queue_get", reload=True)
        return reply["items"], reply.get("running_item") or None

    def history(self) -> list[dict]:
        return self.call("the history request", "history_get", reload=True)["items"]

    def start_queue(self) -> None:
        self.call("to start the queue", "queue_start")

    def pause(self, now: bool = False) -> None:
        """Pause the running plan at its next checkpoint (``now``: at once)."""
        self.call("to pause", "re_pause", "immediate" if now else "deferred")

    def resume(self) -> None:
        self.call("to resume", "re_resume")

    def finish(self) -> None:
        """The panel's Stop: a paused plan ends cleanly (exit status success), a running queue stops after its
        running plan."""
        if self.status().get("manager_state") == "paused":
            self.call("to stop the paused plan", "re_stop")
        else:
            self.call("to stop the queue", "queue_stop")

    def abort(self) -> None:
        """End the plan now, marked aborted (a running plan is paused first, as the RunEngine requires)."""
        if self.status().get("manager_state") != "paused":
            self.pause(now=True)
            self.call("to wait for the pause", "wait_for_idle_or_paused", timeout=30)
        self.call("to abort", "re_abort")

    def halt(self) -> None:
        """End the plan now without its cleanup (no shutter closed, no stage moved): for emergencies."""
        if self.status().get("manager_state") != "paused":
            self.pause(now=True)
            self.call("to wait for the pause", "wait_for_idle_or_paused", timeout=30)
        self.call("to halt", "re_halt")

    def clear(self) -> None:
        """Remove every plan from the queue (the running plan and the history stay)."""
        self.call("to clear the queue", "queue_clear")

    def close(self) -> None:
        self.api.close()


def item_summary(item: dict) -> str:
    """``ptycho_scan shape=[3, 3]`` for an item (its device arguments left out when they are the profile's)."""
    names = PLAN_DEVICES.get(item.get("name", ""), ())
    args = [a for i, a in enumerate(item.get("args", [])) if not (i < len(names) and a == DEVICE_NAMES[names[i]])]
    parts = [json.dumps(a) for a in args] + [f"{k}={json.dumps(v)}" for k, v in item.get("kwargs", {}).items()]
    return " ".join([item.get("name", "?"), *parts])


def derived_of(catalog: str, raw_uids: list[str]) -> dict[str, list[str]]:
    """The derived runs of each raw run (uids, oldest first), found through their parent_uid in ``processed``."""
    if not raw_uids:
        return {}
    from .catalog import open_catalog
    from .catalog_layout import derived_runs

    cat = open_catalog(catalog, create=False)
    return {uid: [r.metadata["start"]["uid"] for r in derived_runs(cat, uid)] for uid in raw_uids}


def history_rows(items: list[dict], catalog: str | None) -> list[dict]:
    """One row per finished item: plan, result, raw run uids and the derived runs found for them."""
    raw = [uid for item in items for uid in item.get("result", {}).get("run_uids", [])]
    derived = derived_of(catalog, raw) if catalog else {}
    rows = []
    for item in items:
        result = item.get("result", {})
        uids = result.get("run_uids", [])
        rows.append({
            "plan": item_summary(item), "item_uid": item.get("item_uid"), "exit_status": result.get("exit_status"),
            "msg": ((result.get("msg") or "").strip().splitlines() or [""])[-1],
            "time_stop": result.get("time_stop"), "scan_ids": result.get("scan_ids", []), "raw_uids": uids,
            "derived_uids": [d for u in uids for d in derived.get(u, [])],
        })
    return rows
