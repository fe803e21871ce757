"""``ns-bluesky queue ...``: the queue server from the shell.

The manager: ``queue start`` / ``queue stop`` (:mod:`.queue_server`). The queue: ``queue add PLAN
key=value ...`` (refused with the reason before it runs when the parameters do not fit the plan),
``queue run`` (start the queue), ``queue pause [--now]``, ``queue resume``, ``queue finish`` (a
paused plan ends cleanly; a running queue stops after its plan), ``queue abort``, ``queue halt`` (an
aborted or halted plan goes back to the front of the queue, as queueserver does), ``queue clear``;
``queue status``, ``queue history`` (each plan's result and its raw and derived runs).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from ..errors import QueueError
from ..io.queue_client import (
    PLAN_DEVICES,
    QUEUE_DIR_ENV,
    QueueClient,
    default_queue_dir,
    history_rows,
    item_summary,
    parse_params,
)
from .options import count, number


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else default_queue_dir()


def _client(args: argparse.Namespace) -> QueueClient:
    return QueueClient(_dir(args), timeout_s=args.timeout)


def _cmd_start(args: argparse.Namespace) -> int:
    from ..io.catalog import default_catalog
    from .queue_server import start_queue

    startup = args.profile_startup(args.ipython_dir).resolve()  # the manager runs in the state directory
    catalog = str(args.catalog or default_catalog())
    if not catalog.startswith(("http://", "https://")):
        catalog = str(Path(catalog).expanduser().resolve())
    state = start_queue(_dir(args), catalog=catalog, startup_dir=startup, timeout_s=args.wait)
    client = QueueClient(_dir(args), timeout_s=args.timeout)
    try:
        plans = sorted(client.call("the plans request", "plans_allowed", reload=True)["plans_allowed"])
        devices = sorted(client.call("the devices request", "devices_allowed", reload=True)["devices_allowed"])
    finally:
        client.close()
    print(f"queue server: RE Manager pid {state.manager_pid} on {state.control_addr} (CURVE), Redis on "
          f"127.0.0.1:{state.redis_port}, environment open from {startup}\n"
          f"  plans    {', '.join(plans)}\n  devices  {', '.join(devices)}\n  catalog  {catalog}\n"
          f"  state    {_dir(args)} (logs/manager.log)")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from .queue_server import stop_queue

    state = stop_queue(_dir(args), force=args.force)
    print(f"queue server stopped (RE Manager pid {state.manager_pid}, Redis pid {state.redis_pid}); "
          "the queue and its history are kept for the next start")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        status = client.status()
        queue, running_item = client.queue()
    finally:
        client.close()
    if args.json:
        print(json.dumps({"status": status, "queue": queue, "running": running_item}, indent=2, default=str))
        return 0
    env = "open" if status.get("worker_environment_exists") else "closed"
    print(f"manager {status.get('manager_state')}, environment {env}, {status.get('items_in_queue')} queued, "
          f"{status.get('items_in_history')} in history, on {client.state.control_addr}")
    if running_item:
        print(f"  running  {item_summary(running_item)}")
    for i, item in enumerate(queue):
        print(f"  {i + 1:>7}  {item_summary(item)}  ({item['item_uid'][:8]})")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    plan_args, kwargs = parse_params(args.params)
    client = _client(args)
    try:
        item = client.add(args.plan, plan_args, kwargs)
        if args.run:
            client.start_queue()
    finally:
        client.close()
    print(f"queued {item_summary(item)} ({item['item_uid'][:8]})" + ("; the queue runs" if args.run else ""))
    return 0


def _simple(method: str, done: str):
    def run(args: argparse.Namespace) -> int:
        client = _client(args)
        try:
            getattr(client, method)(**({"now": args.now} if method == "pause" else {}))
        finally:
            client.close()
        print(done)
        return 0

    return run


def _cmd_history(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        items = client.history()[-args.limit:]
    finally:
        client.close()
    rows = history_rows(items, client.state.catalog)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("the history is empty")
    for r in rows:
        when = datetime.fromtimestamp(r["time_stop"]).strftime("%H:%M:%S") if r["time_stop"] else "--:--:--"
        raw = ",".join(u[:8] for u in r["raw_uids"]) or "-"
        der = ",".join(u[:8] for u in r["derived_uids"]) or "-"
        why = f"  ({r['msg']})" if r["msg"] and r["exit_status"] != "completed" else ""
        print(f"{when}  {r['exit_status']:<9} {r['plan']}  raw {raw}  derived {der}{why}")
    return 0


def _cmd_wait(args: argparse.Namespace) -> int:
    """Wait until the queue is idle (for scripts): the number of finished items, or a one-line timeout."""
    client = _client(args)
    deadline = time.monotonic() + args.seconds
    try:
        while True:
            status = client.status()
            if status.get("manager_state") == "idle":  # the queue ran out, or stopped (a failed plan stops it)
                break
            if time.monotonic() > deadline:
                raise QueueError(f"the queue is still {status.get('manager_state')} after {args.seconds:g} s")
            time.sleep(0.25)
    finally:
        client.close()
    print(f"the queue is idle: {status.get('items_in_queue')} queued, {status.get('items_in_history')} in history")
    return 0


def add_parser(sub, catalog_arg, profile_startup) -> None:
    """``ns-bluesky queue ...`` on the main parser's subcommands; ``profile_startup(ipython_dir)`` is the installed
    beamline profile's startup directory (installed first when missing)."""
    q = sub.add_parser(
        "queue", help="the queue server (bluesky-queueserver): start/stop it, add, run, pause, history",
        description="Scans the NSLS-II way: 'queue start' runs a bluesky-queueserver RE Manager (its Redis on "
        "127.0.0.1, its control socket CURVE-encrypted) whose worker loads the beamline profile; 'queue add' "
        "queues a plan (checked against the plan's signature first), 'queue run' runs the queue. "
        f"The state lives in --dir (default ${QUEUE_DIR_ENV} or the user data directory).",
    )
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    def action(name: str, func, help: str, description: str | None = None):
        p = qsub.add_parser(name, help=help, description=description or help)
        p.add_argument("--dir", help=f"the queue server's state directory (default ${QUEUE_DIR_ENV} or "
                       "~/.local/share/ns-bluesky/queue)")
        p.add_argument("--timeout", type=number(0, 600, above=True, what=" s"), default=3.0,
                       help="seconds to wait for each answer of the manager (default 3)")
        p.set_defaults(func=func)
        return p

    start = action("start", _cmd_start, "start the RE Manager, its Redis and its worker environment (the profile)",
                   "Start Redis (127.0.0.1, a free port, data in the state directory), the RE Manager (control "
                   "socket on 127.0.0.1 with CURVE keys in 0600 files) and open its worker environment from the "
                   "installed IPython profile (installed first if missing); returns once plans can be queued.")
    start.add_argument("--ipython-dir", help="IPython's directory holding profile_nanosurveyor (default: IPython's own)")
    start.add_argument("--wait", type=number(1, 3600, what=" s"), default=180.0,
                       help="seconds to wait for the environment to open (default 180)")
    catalog_arg(start)
    start.set_defaults(profile_startup=profile_startup)
    stop = action("stop", _cmd_stop, "close the worker environment, stop the RE Manager and its Redis")
    stop.add_argument("--force", action="store_true", help="even while a plan runs (it is ended, not finished)")
    status = action("status", _cmd_status, "the manager's state, the running plan and the queue")
    status.add_argument("--json", action="store_true")
    add = action("add", _cmd_add, "queue a plan: queue add ptycho_scan shape=10,10 overlap=0.5",
                 "Queue a plan with its parameters as key=value (lists as 3,3 or [3, 3]); the devices fccd, stage "
                 "and shutter are filled in. The manager checks the parameters against the plan's signature and "
                 "refuses a plan that does not fit, with the reason, before anything runs.")
    add.add_argument("plan", choices=sorted(PLAN_DEVICES), help="the plan")
    add.add_argument("params", nargs="*", metavar="KEY=VALUE", help="its parameters, e.g. shape=3,3 overlap=0.5")
    add.add_argument("--run", action="store_true", help="and start the queue")
    action("run", _simple("start_queue", "the queue runs"), "start the queue: its plans run one after the other")
    pause = action("pause", _simple("pause", "pause requested"), "pause the running plan at its next checkpoint")
    pause.add_argument("--now", action="store_true", help="pause at once instead of at the next checkpoint")
    action("resume", _simple("resume", "resumed"), "resume the paused plan")
    action("finish", _simple("finish", "stop requested"),
           "stop: a paused plan ends cleanly (success); a running queue stops after its running plan")
    back = "; the plan is back at the front of the queue ('ns-bluesky queue clear' empties the queue)"
    action("abort", _simple("abort", "aborted" + back),
           "end the running or paused plan now, marked aborted (cleanup runs); it goes back to the front of the queue")
    action("halt", _simple("halt", "halted" + back),
           "end the plan now without its cleanup (emergencies); it goes back to the front of the queue")
    action("clear", _simple("clear", "the queue is empty"), "remove every plan from the queue (the history stays)")
    hist = action("history", _cmd_history, "finished plans: result, raw and derived runs")
    hist.add_argument("--limit", type=count(1), default=20, help="the last this many (default 20)")
    hist.add_argument("--json", action="store_true")
    wait = action("wait", _cmd_wait, "wait until the queue has stopped: run out, stopped, or a plan failed (for scripts)")
    wait.add_argument("seconds", type=number(0, 86_400, what=" s"), help="at most this long")
