"""Transport throughput and latency: handler -> 2 echo workers -> results subscriber, beside raw
pyzmq PUSH/PULL through 2 echo processes, in the same run. Prints figures; passes or fails nothing.

    .venv/bin/python benchmarks/transport.py [--frames 400] [--hop-frames 1000] [--only auth]

Consumers run in their own processes, as GUIs and the catalog writer do.
Target: >= 50 % of raw pyzmq throughput and >= 200 raw 2.4 MB frames/s (the FCCD's design rate is 100).

The cost of keeping other users out (``--only auth`` runs just this part): one hop of 2.4 MB
frames (1040 x 1152 uint16), PUSH in this process to PULL in another, over plain TCP
loopback, TCP with CURVE, and ipc:// in a 0700 directory, side by side: frames/s and the CPU
time both processes spent per frame (their own threads and libzmq's I/O threads). Then the
whole pipeline keyless (ipc, the default) beside the same pipeline with CURVE keys.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from ns_bluesky.stream.client import ControlClient, IngestClient
from ns_bluesky.stream.config import free_loopback_ports, load_config
from ns_bluesky.stream.protocol import Message, decode


def _summary(label, n, nbytes, t, latencies):
    lat = np.asarray(latencies) * 1e3
    print(
        f"{label:<40} {n / t:8.1f} frames/s {n * nbytes / t / 1e6:8.1f} MB/s   "
        f"latency p50 {np.percentile(lat, 50):6.1f} ms  p99 {np.percentile(lat, 99):6.1f} ms"
    )
    return n / t


def _subscriber(address: str, n: int, conn, keys: str | None = None) -> None:
    """Results consumer in its own process, as GUIs and the catalog writer are."""
    from ns_bluesky.stream.security import secure_client

    sub = zmq.Context().socket(zmq.SUB)
    secure_client(sub, keys)
    sub.setsockopt(zmq.SUBSCRIBE, b"echo")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(address)
    conn.send("ready")
    latencies = []
    while len(latencies) < n and sub.poll(20000):
        msg = decode(sub.recv_multipart(copy=False)[1:])
        latencies.append(time.perf_counter() - msg.meta["t_sent"])  # CLOCK_MONOTONIC: same clock in every process
    conn.send((time.perf_counter(), latencies))


def pipeline_run(cfg, frame: np.ndarray, n: int) -> tuple[float, list[float]]:
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_subscriber, args=(cfg.address(cfg.results_port, connect=True), n, child, cfg.curve_keys))
    proc.start()
    parent.recv()
    time.sleep(0.5)
    client = IngestClient(cfg, window=128)
    run = f"bench-{time.time()}"
    t0 = time.perf_counter()
    client.send(Message("start", run=run))
    for seq in range(n):
        client.send(Message("frame", run=run, seq=seq, meta={"t_sent": time.perf_counter()}, arrays={"raw": frame}))
    client.send(Message("stop", run=run))
    t_end, latencies = parent.recv()
    proc.join(10)
    client.close()
    if len(latencies) < n:
        print(f"  only {len(latencies)} of {n} results arrived")
    return t_end - t0, latencies


def _raw_worker(pull_port, push_port):
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.connect(f"tcp://127.0.0.1:{pull_port}")
    push.connect(f"tcp://127.0.0.1:{push_port}")
    while True:
        frames = pull.recv_multipart(copy=False)
        if frames[0].bytes == b"quit":
            break
        push.send_multipart(frames, copy=False)


def _raw_sink(port: int, n: int, conn) -> None:
    pull = zmq.Context().socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    conn.send("ready")
    latencies = []
    for _ in range(n):
        frames = pull.recv_multipart(copy=False)
        latencies.append(time.perf_counter() - float(frames[0].bytes))
    conn.send((time.perf_counter(), latencies))


def raw_run(frame: np.ndarray, n: int) -> tuple[float, list[float]]:
    """The same topology in plain pyzmq: PUSH -> 2 echo processes -> PULL sink in its own process."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    out_port = push.bind_to_random_port("tcp://127.0.0.1")
    (in_port,) = free_loopback_ports(1)
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    sink = spawn.Process(target=_raw_sink, args=(in_port, n, child))
    sink.start()
    parent.recv()
    procs = [spawn.Process(target=_raw_worker, args=(out_port, in_port)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    for _ in range(n):
        push.send_multipart([str(time.perf_counter()).encode(), memoryview(frame)], copy=False)
    t_end, latencies = parent.recv()
    for _ in procs:
        push.send_multipart([b"quit", b""])
    for p in procs + [sink]:
        p.join(5)
    push.close(linger=0)
    return t_end - t0, latencies


def _cpu_s() -> float:
    """CPU seconds of this process so far, every thread (libzmq's I/O threads and CURVE included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _hop_sink(endpoint: str, n: int, server_keys, conn) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    if server_keys:
        pull.curve_secretkey, pull.curve_publickey, pull.curve_server = server_keys[1], server_keys[0], True
    pull.bind(endpoint)
    conn.send("ready")
    cpu0 = _cpu_s()
    got = 0
    while got < n and pull.poll(30000):
        pull.recv_multipart(copy=False)
        got += 1
    conn.send((time.perf_counter(), got, _cpu_s() - cpu0))
    pull.close(linger=0)
    ctx.term()


def hop_run(label: str, endpoint: str, frame: np.ndarray, n: int, curve: bool) -> tuple[float, float]:
    """One hop, ``n`` frames: frames/s and CPU ms per frame (sender + receiver)."""
    server = zmq.curve_keypair() if curve else None
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    sink = spawn.Process(target=_hop_sink, args=(endpoint, n, server, child))
    sink.start()
    parent.recv()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    if curve:
        push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
        push.curve_serverkey = server[0]
    push.connect(endpoint)
    push.send_multipart([b"hello", b""])  # the handshake (and CURVE's key exchange) before the clock starts
    time.sleep(0.3)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for _ in range(n - 1):
        push.send_multipart([b"h", memoryview(frame)], copy=False)
    t_end, got, sink_cpu = parent.recv()
    sent_cpu = _cpu_s() - cpu0
    sink.join(10)
    push.close(linger=0)
    ctx.term()
    rate = (got - 1) / (t_end - t0)
    per = (sent_cpu + sink_cpu) / max(got - 1, 1) * 1e3
    print(f"  {label:<42} {rate:8.1f} frames/s {rate * frame.nbytes / 1e6:8.1f} MB/s   CPU {per:6.2f} ms/frame "
          f"(sender {sent_cpu / max(got - 1, 1) * 1e3:.2f}, receiver {sink_cpu / max(got - 1, 1) * 1e3:.2f})")
    return rate, per


def auth_costs(hop_frames: int, pipeline_frames: int) -> None:
    """Plain TCP vs CURVE vs ipc in a 0700 directory, one hop and through the pipeline, side by side."""
    from ns_bluesky.stream.security import generate

    frame = np.random.default_rng(0).integers(0, 4096, (1040, 1152), dtype=np.uint16)  # CURVE cannot shortcut zeros
    print(f"one hop, PUSH -> PULL in another process, {hop_frames} frames of 1040 x 1152 uint16 (2.4 MB); load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        (tcp_port,) = free_loopback_ports(1)
        figures = {}
        for rnd in range(2):  # interleaved twice: the machine's load drifts
            for label, endpoint, curve in (
                ("plain TCP 127.0.0.1 (anyone on the host)", f"tcp://127.0.0.1:{tcp_port}", False),
                ("TCP + CURVE (keys)", f"tcp://127.0.0.1:{tcp_port}", True),
                ("ipc:// in a 0700 directory", f"ipc://{d}/hop-{rnd}", False),
            ):
                figures.setdefault(label, []).append(hop_run(label, endpoint, frame, hop_frames, curve))
        base_rate, base_cpu = (np.median([f[i] for f in figures["plain TCP 127.0.0.1 (anyone on the host)"]]) for i in (0, 1))
        for label, fs in figures.items():
            rate, cpu = np.median([f[0] for f in fs]), np.median([f[1] for f in fs])
            print(f"  median {label:<42} frames/s x{rate / base_rate:.2f} of plain TCP, CPU per frame x{cpu / base_cpu:.2f}")
        print(f"whole pipeline (ingest -> handler -> 2 echo workers -> subscriber), {pipeline_frames} frames; load {os.getloadavg()[0]:.1f}")
        keys = generate(Path(d) / "keys")
        rates = {}
        for label, extra in (("keyless: ipc in a 0700 directory", ""), ("curve_keys: TCP + CURVE", f'curve_keys = "{keys}"\n')):
            cfg, handler = _start_pipeline(Path(d) / label.split(":")[0], extra)
            try:
                t, lat = pipeline_run(cfg, frame, pipeline_frames)
                rates[label] = _summary(f"  pipeline, {label}", len(lat), frame.nbytes, t, lat)
            finally:
                ControlClient(cfg)("stop")
                handler.wait(10)
        (a, b) = rates.values()
        print(f"  ratio CURVE / ipc through the pipeline: {b / a:.2f}")


def _start_pipeline(d: Path, extra: str = ""):
    d.mkdir(parents=True, exist_ok=True)
    c, i, w, r = free_loopback_ports(4)
    conf = d / "p.toml"
    conf.write_text(
        f'control_port = {c}\ningest_port = {i}\nworker_port = {w}\nresults_port = {r}\nlog_dir = "{d}/logs"\n{extra}'
        '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 2\ncredits = 4\n'
    )
    cfg = load_config(conf)
    handler = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(conf)])
    try:
        ControlClient(cfg).wait_ready(60)
    except BaseException:
        handler.kill()
        handler.wait()
        raise
    return cfg, handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--hop-frames", type=int, default=1000, help="frames per transport in the authentication comparison")
    ap.add_argument("--only", choices=("auth", "throughput"), help="run one part (default: both)")
    args = ap.parse_args()
    if args.only != "throughput":
        auth_costs(args.hop_frames, args.frames)
    if args.only == "auth":
        return
    with tempfile.TemporaryDirectory() as d:
        c, i, w, r = free_loopback_ports(4)
        conf = Path(d) / "p.toml"
        conf.write_text(
            f'control_port = {c}\ningest_port = {i}\nworker_port = {w}\nresults_port = {r}\nlog_dir = "{d}/logs"\n'
            '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 2\ncredits = 4\n'
        )
        cfg = load_config(conf)
        handler = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(conf)])
        try:
            ControlClient(cfg).wait_ready(60)
            for label, frame in (
                ("raw FCCD 1040x1152 uint16 (2.4 MB)", np.zeros((1040, 1152), np.uint16)),
                ("256x256 float32 (0.26 MB)", np.zeros((256, 256), np.float32)),
            ):
                t, lat = pipeline_run(cfg, frame, args.frames)
                ours = _summary(f"pipeline, {label}", len(lat), frame.nbytes, t, lat)
                t, lat = raw_run(frame, args.frames)
                raw = _summary(f"raw PUSH/PULL, {label}", len(lat), frame.nbytes, t, lat)
                print(f"  ratio pipeline / raw pyzmq: {ours / raw:.2f}")
        finally:
            ControlClient(cfg)("stop")
            handler.wait(10)


if __name__ == "__main__":
    main()
