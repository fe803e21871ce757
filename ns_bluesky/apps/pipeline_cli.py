"""``ns-bluesky pipeline|modules|keys|logs|stream-sim``: the streaming framework from the shell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ParameterError
from ..stream.client import ControlClient, PipelineUnavailable
from ..stream.config import apply_launcher_args, load_config, parse_counts
from ..stream.logs import log_dir


def _config(args):
    cfg = load_config(getattr(args, "config", None), parse_counts(getattr(args, "workers", None)))
    return apply_launcher_args(cfg, getattr(args, "launcher", None), getattr(args, "partition", None), getattr(args, "account", None))


def _print_jobs(launcher: dict) -> None:
    """SLURM's side of the status: every worker job with its state (a PENDING one with SLURM's reason)."""
    if launcher.get("kind") != "slurm":
        return
    where = ", ".join(f"{k} {launcher[k]}" for k in ("partition", "account") if launcher.get(k))
    print(f"  SLURM jobs (workers connect to {launcher['address']}{'; ' + where if where else ''}):")
    for j in launcher["jobs"]:
        extra = f" ({j['reason']})" if j["reason"] else ""
        on = f" on {j['node']}" if j["node"] and j["state"] == "RUNNING" else ""
        flags = " draining" if j["draining"] else " cancelled" if j["cancelled"] else ""
        print(f"      job {j['job']:<8} {j['module']:<10} {j['state']}{extra}{on}  {j['age_s']:.0f} s since submit{flags}")
    for what, error in launcher.get("errors", {}).items():
        print(f"      {what}: {error}")


def _pending(status: dict) -> list[dict]:
    return [j for j in status.get("launcher", {}).get("jobs", []) if j["state"] in ("PENDING", "SUBMITTED", "CONFIGURING")]


def _wait_workers(control: ControlClient, timeout_s: float, what: str) -> tuple[dict, bool]:
    """Until every module has its workers (status, True); with SLURM, jobs still queued at the deadline are
    reported, not waited for (status, False)."""
    try:
        return control.wait_ready(timeout_s), True
    except PipelineUnavailable:
        status = control.status()
        errors = status.get("launcher", {}).get("errors", {})
        if errors:  # SLURM said why (a bad partition, jobs that fail at once): one line, not a log hunt
            raise ParameterError(f"the workers did not join within {timeout_s:g} s: {'; '.join(f'{k}: {v}' for k, v in errors.items())} "
                                 "(the handler keeps trying; 'ns-bluesky pipeline stop' ends it)") from None
        pending = _pending(status)
        if not pending:
            launcher = status.get("launcher", {})
            joined = {w.get("job") for m in status["modules"].values() for w in m["workers"]}
            lost = [j["job"] for j in launcher.get("jobs", []) if j["state"] == "RUNNING" and j["job"] not in joined]
            if lost:  # placed, but the worker never reached the handler (address, firewall, keys, Python on the node)
                raise ParameterError(f"SLURM jobs {', '.join(lost)} run but their workers did not connect to {launcher['address']} "
                                     f"within {timeout_s:g} s; see {launcher['output']}/*-JOBID.out and the worker logs") from None
            raise
        ids = ", ".join(f"{j['job']} ({j['reason'] or j['state']})" for j in pending)
        print(f"{what}: {len(pending)} worker job(s) still queued after {timeout_s:.0f} s: {ids}; "
              "'ns-bluesky pipeline status' follows them, 'pipeline scale' or 'stop' cancels them")
        return status, False


def _print_status(status: dict) -> None:
    print(f"handler pid {status['pid']}  up {status['uptime_s']} s  ports {status['ports']}  workers: {status.get('launcher', {}).get('kind', '?')}")
    if status["malformed"]:
        print(f"  malformed: {status['malformed']}")
    for name, m in status["modules"].items():
        pids = ",".join(f"{w['pid']}" + (f"@job {w['job']}" if w.get("job") else "") for w in m["workers"]) or "-"
        print(
            f"  {name:<10} workers {len(m['workers'])}/{m['wanted_workers']} (pids {pids})  {m['items_per_s']:.1f} items/s  "
            f"queue {m['queue']}  in flight {m['in_flight']}  received {m['received']}  processed {m['processed']}  "
            f"re-dispatched {m['redispatched']}  duplicates {m['duplicates']}  errors {m['errors']}  aborted {m['aborted']}"
        )
        for w in m["workers"]:
            print(f"      pid {w['pid']}: processed {w['processed']}, in flight {w['in_flight']}, heartbeat {w['last_heartbeat_s']} s ago")
    _print_jobs(status.get("launcher", {}))


def cmd_pipeline(args) -> int:
    cfg = _config(args)
    control = ControlClient(cfg)
    if args.action == "start":
        try:
            control.status()
            raise ParameterError(f"a pipeline already answers on port {cfg.control_port}; 'ns-bluesky pipeline stop' first")
        except PipelineUnavailable:
            pass
        cmd = [sys.executable, "-m", "ns_bluesky.stream.handler"]
        if args.config:
            cmd += ["--config", args.config]
        if args.workers:
            cmd += ["--workers", *args.workers]
        if args.log_dir:
            cmd += ["--log-dir", args.log_dir]
        if args.no_local_workers:
            cmd += ["--no-local-workers"]
        for opt in ("launcher", "partition", "account"):
            if getattr(args, opt):
                cmd += [f"--{opt}", getattr(args, opt)]
        logs = log_dir(args.log_dir or cfg.log_dir)
        logs.mkdir(parents=True, exist_ok=True)
        stderr_path = logs / "handler.stderr"  # a file, not a pipe nobody reads once we return
        with open(stderr_path, "ab") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + args.timeout
        complete = True
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                lines = stderr_path.read_text(errors="replace").strip().splitlines()
                raise ParameterError(f"the handler exited: {lines[-1] if lines else proc.returncode} (see {stderr_path})")
            try:
                if args.no_local_workers:  # ready when the handler answers; workers connect from elsewhere
                    status = control.status()
                elif cfg.launcher == "slurm":  # up once it answers; then the jobs get the rest of the time
                    control.status()
                    status, complete = _wait_workers(control, max(deadline - time.monotonic(), 0.1), "start")
                else:
                    status = control.wait_ready(min(2.0, max(deadline - time.monotonic(), 0.1)))
                word = "ready" if complete else "up, workers still queued"
                print(f"pipeline {word} (handler pid {proc.pid}); logs in {log_dir(args.log_dir or cfg.log_dir)}")
                _print_status(status)
                return 0
            except PipelineUnavailable:
                continue
        raise ParameterError(f"the pipeline did not report ready within {args.timeout:g} s; see 'ns-bluesky logs handler'")
    if args.action == "status":
        status = control.status()
        print(json.dumps(status, indent=2)) if args.json else _print_status(status)
        return 0
    if args.action == "stop":
        try:
            control("stop")
        except PipelineUnavailable:
            from ..stream.slurm import cancel_saved_jobs

            cancelled = cancel_saved_jobs(args.log_dir or cfg.log_dir)  # a handler that died leaves its jobs listed
            if not cancelled:
                raise
            print(f"no handler answered; cancelled its SLURM jobs {', '.join(cancelled)}")
            return 0
        print("pipeline stopping")
        return 0
    if args.action == "abort":
        reply = control("abort", run=args.run)
        print(f"aborted: {reply['dropped']} queued items dropped in {reply['seconds'] * 1000:.0f} ms")
        return 0
    if args.action == "reset":
        control("reset")
        print("pipeline reset")
        return 0
    if args.action == "scale":
        counts = parse_counts(args.counts)
        control("scale", counts=counts)
        _wait_workers(control, args.timeout, "scaled")
        print("scaled: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        return 0
    if args.action == "slurm-script":
        return _slurm_script(cfg, args)
    raise ParameterError(f"unknown pipeline action {args.action!r}")


def _slurm_script(cfg, args) -> int:
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=ns-bluesky-workers",
        f"#SBATCH --ntasks={sum(m.workers for m in cfg.modules)}",
        "#SBATCH --time=12:00:00",
        "# Starts the pipeline's modules on cluster nodes against the handler at "
        f"{args.handler_host}:{cfg.worker_port}. The handler must bind that interface with CURVE keys and run\n"
        "# without local workers: ns-bluesky pipeline start --no-local-workers --config <the same file>",
        "set -euo pipefail",
    ]
    for spec in cfg.modules:
        cmd = (
            f"python -m ns_bluesky.stream.worker --module {spec.module} --name {spec.name} "
            f"--address tcp://{args.handler_host}:{cfg.worker_port} --params '{json.dumps(spec.params)}' --credits {spec.credits} --max-array-mb {cfg.max_array_mb:g}"
        )
        if cfg.curve_keys:
            cmd += f" --curve-keys {cfg.curve_keys}"
        lines.append(f"srun --exclusive -n {spec.workers} {cmd} &")
    lines.append("wait")
    text = "\n".join(lines) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_modules(args) -> int:
    from ..stream.stage import load_stage, stage_names

    mods = {name: load_stage(name) for name in stage_names()}
    if args.json:
        print(json.dumps({name: cls.describe() for name, cls in sorted(mods.items())}, indent=2))
        return 0
    for name, cls in sorted(mods.items()):
        params = ", ".join(f"{k}={v.default!r}" for k, v in cls.Params.model_fields.items()) or "-"
        print(f"{name:<10} {' '.join(cls.inputs)} -> {' '.join(cls.outputs)}   params: {params}\n           {cls.description}")
    return 0


def cmd_keys(args) -> int:
    from ..stream.security import generate

    d = generate(args.directory)
    print(f"CURVE keys in {d}; set curve_keys = \"{d}\" in the pipeline config on the handler and the clients")
    return 0


def cmd_logs(args) -> int:
    directory = log_dir(args.log_dir)
    files = sorted(directory.glob(f"{args.module or '*'}.log"))
    if not files:
        raise ParameterError(f"no logs {'for ' + args.module + ' ' if args.module else ''}in {directory}")
    handles = {f: open(f) for f in files}
    try:
        for h in handles.values():
            sys.stdout.writelines(h.readlines()[-args.lines :])
        sys.stdout.flush()
        while args.follow:
            moved = False
            for h in handles.values():
                line = h.readline()
                while line:
                    sys.stdout.write(line)
                    moved = True
                    line = h.readline()
            sys.stdout.flush()
            if not moved:
                time.sleep(0.2)
    finally:
        for h in handles.values():
            h.close()
    return 0


def cmd_stream_sim(args) -> int:
    """Simulated raw FCCD frames straight into the handler, at a rate: the paper's FCCD streamer."""
    import math
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from ..instrument.scan import ScanPattern
    from ..sim import PtychoSimulation
    from ..sim.settings import SimConfig
    from ..stream.client import IngestClient
    from ..stream.protocol import Message

    if args.frames < 1 or args.rate < 0:
        raise ParameterError(f"--frames must be >= 1 and --rate >= 0, got {args.frames} and {args.rate}")
    cfg = _config(args)
    side = max(1, math.ceil(math.sqrt(args.frames)))
    sim = PtychoSimulation(SimConfig(seed=args.seed, scan=ScanPattern(shape=(side, side), overlap=0.7)))
    n_distinct = min(args.frames, args.distinct)
    with ThreadPoolExecutor(2) as pool:  # render ahead, then stream at the rate
        bank = list(pool.map(lambda i: sim.raw_frame(sim.planned[i], i), range(n_distinct)))
    client = IngestClient(cfg)
    run = args.run or f"stream-sim-{uuid.uuid4()}"
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    t0 = time.monotonic()
    client.send(Message("start", run=run, meta={"start": {"plan_name": "stream-sim", "num_points": args.frames}}), timeout_s=args.timeout)
    for seq in range(args.frames):
        wait = t0 + seq * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        y, x = (float(v) for v in sim.planned[seq % len(sim.planned)])
        meta = {"data": {"stage_y": y, "stage_x": x}, "time": time.time()}
        frame = Message("frame", run=run, seq=seq + 1, meta=meta, arrays={"raw": np.asarray(bank[seq % n_distinct])})
        client.send(frame, timeout_s=args.timeout)
    client.send(Message("stop", run=run, meta={"exit_status": "success"}))
    client.flush(args.timeout)
    elapsed = time.monotonic() - t0
    print(
        f"sent {args.frames} frames of run {run} in {elapsed:.1f} s ({args.frames / elapsed:.1f} frames/s, "
        f"{n_distinct} distinct), {client.acked} messages acknowledged"
    )
    client.close()
    return 0


def add_parsers(sub, catalog_arg) -> None:
    p = sub.add_parser("pipeline", help="start, inspect and steer the streaming pipeline", description="The streaming pipeline: handler and its workers (local processes, or SLURM jobs with --launcher slurm).")
    p.add_argument("action", choices=("start", "status", "stop", "abort", "reset", "scale", "slurm-script"))
    p.add_argument("counts", nargs="*", help="for scale: NAME=COUNT, e.g. frame=6")
    p.add_argument("--config", help="pipeline TOML/YAML file (default: built-in echo pipeline)")
    p.add_argument("--workers", nargs="*", metavar="NAME=N", help="override worker counts at start")
    p.add_argument("--run", help="for abort: only this run (default: all)")
    p.add_argument("--json", action="store_true", help="for status: machine-readable")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    p.add_argument("--no-local-workers", action="store_true", help="for start: workers run elsewhere and connect")
    p.add_argument("--launcher", choices=("local", "slurm"), help="for start: workers as local processes (default) or SLURM jobs")
    p.add_argument("--partition", help="for start: the SLURM partition of the worker jobs")
    p.add_argument("--account", help="for start: the SLURM account charged for the worker jobs")
    p.add_argument("--log-dir", help="log directory (default $NS_BLUESKY_STREAM_LOG_DIR or ~/.nanosurveyor/streaming/log)")
    p.add_argument("--handler-host", default="127.0.0.1", help="for slurm-script: the handler's address as nodes see it")
    p.add_argument("-o", "--output", help="for slurm-script: file to write")
    p.set_defaults(func=cmd_pipeline)

    m = sub.add_parser("modules", help="list processing modules", description="List the processing modules with their inputs, outputs and parameters.")
    m.add_argument("--json", action="store_true", help="print the JSON schema of every module")
    m.set_defaults(func=cmd_modules)

    k = sub.add_parser("keys", help="CURVE keys for non-loopback pipelines", description="Generate CURVE key pairs.")
    k.add_argument("action", choices=("generate",))
    k.add_argument("directory", nargs="?", default=str(Path.home() / ".nanosurveyor" / "keys"))
    k.set_defaults(func=cmd_keys)

    ss = sub.add_parser(
        "stream-sim",
        help="stream simulated raw FCCD frames into the pipeline",
        description="Stream simulated raw FCCD frames straight into the handler's ingest port (no RunEngine).",
    )
    ss.add_argument("--rate", type=float, default=10.0, help="frames per second; 0 = as fast as possible")
    ss.add_argument("--frames", type=int, default=100)
    ss.add_argument("--distinct", type=int, default=32, help="distinct frames rendered ahead and cycled (default 32)")
    ss.add_argument("--run", help="run id (default: a new uuid)")
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--config", help="pipeline TOML/YAML file, for its ports")
    ss.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements")
    ss.set_defaults(func=cmd_stream_sim)

    lg = sub.add_parser("logs", help="show or follow module logs", description="Show the last lines of module logs; -f follows them.")
    lg.add_argument("module", nargs="?", help="handler, or a module name (default: all)")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-n", "--lines", type=int, default=20)
    lg.add_argument("--log-dir")
    lg.set_defaults(func=cmd_logs)
