"""Transport throughput and latency: handler -> 2 echo workers -> results subscriber, beside raw
pyzmq PUSH/PULL through 2 echo processes, in the same run. Prints figures; passes or fails nothing.

    .venv/bin/python benchmarks/transport.py [--frames 400]

Consumers run in their own processes, as GUIs and the catalog writer do.
Target: >= 50 % of raw pyzmq throughput and >= 200 raw 2.4 MB frames/s (the FCCD's design rate is 100).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
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


def _subscriber(address: str, n: int, conn) -> None:
    """Results consumer in its own process, as GUIs and the catalog writer are."""
    sub = zmq.Context().socket(zmq.SUB)
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
    proc = mp.get_context("spawn").Process(target=_subscriber, args=(cfg.address(cfg.results_port, connect=True), n, child))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    args = ap.parse_args()
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
