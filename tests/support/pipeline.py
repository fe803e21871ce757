"""Pipelines on loopback for tests: a real handler process with real workers on ports chosen per test, its results socket, its clients.

Loaded for every test package by ``pytest_plugins`` in tests/conftest.py (the ``make_pipeline`` fixture).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from ns_bluesky.stream.client import ControlClient, IngestClient
from ns_bluesky.stream.config import PipelineConfig, free_loopback_ports
from ns_bluesky.stream.protocol import Message, decode
from ns_bluesky.stream.security import secure_client


def write_config(path, modules: str, **extra) -> PipelineConfig:
    c, i, w, r = free_loopback_ports(4)
    lines = [f"control_port = {c}", f"ingest_port = {i}", f"worker_port = {w}", f"results_port = {r}",
             f'log_dir = "{path.parent / "logs"}"', f'spill_dir = "{path.parent / "spill"}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n" + modules)
    from ns_bluesky.stream.config import load_config

    return load_config(path)


class Results:
    """Everything the handler publishes, collected from a SUB socket."""

    def __init__(self, cfg: PipelineConfig):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(self.sock, cfg.curve_keys)
        self.sock.connect(cfg.address(cfg.results_port, connect=True))
        self.messages: list[Message] = []

    def collect(self, until, timeout_s: float = 30.0) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while not until(self.messages) and time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                self.messages.append(decode(frames[1:]))
        return self.messages

    def ended(self, run: str) -> bool:
        return any(m.kind == "end_of_run" and m.run == run for m in self.messages)

    def close(self):
        self.sock.close(linger=0)


class Pipeline:
    def __init__(self, tmp_path, modules: str, **extra):
        self.cfg = write_config(tmp_path / "pipeline.toml", modules, **extra)
        self.proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(tmp_path / "pipeline.toml")])
        self.control = ControlClient(self.cfg, timeout_s=5)
        self.control.wait_ready(60)
        self.results = Results(self.cfg)
        time.sleep(0.3)  # SUB joins before data flows

    def ingest(self) -> IngestClient:
        return IngestClient(self.cfg)

    def stop(self):
        if self.proc.poll() is not None:
            self.results.close()
            return
        try:
            self.control("stop")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.results.close()


ECHO = '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = {workers}\nparams = {{ delay_s = {delay} }}\n'


@pytest.fixture
def make_pipeline(tmp_path):
    made = []

    def make(modules: str = ECHO.format(workers=2, delay=0.0), **extra) -> Pipeline:
        p = Pipeline(tmp_path, modules, **extra)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def send_run(client: IngestClient, run: str, n: int, shape=(32, 32), start_seq: int = 0) -> None:
    client.send(Message("start", run=run, meta={"purpose": "test"}))
    for seq in range(start_seq, start_seq + n):
        client.send(Message("frame", run=run, seq=seq, arrays={"image": np.full(shape, seq % 65535, np.uint16)}))
    client.send(Message("stop", run=run))
