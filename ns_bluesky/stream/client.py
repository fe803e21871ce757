"""Clients of the handler: the control port (commands) and the ingest port (data, acknowledged)."""

from __future__ import annotations

import time

import zmq

from ..errors import NSBlueskyError
from .config import PipelineConfig
from .protocol import Message, ProtocolError, decode, encode
from .security import secure_client


class PipelineUnavailable(NSBlueskyError, ConnectionError):
    """Nothing answered on the handler's control port."""


class ControlClient:
    """Send one command, get one reply; a timeout gives a clear error instead of a hang."""

    def __init__(self, cfg: PipelineConfig, *, timeout_s: float = 3.0, context: zmq.Context | None = None):
        self.cfg, self.timeout_s = cfg, timeout_s
        self.ctx = context or zmq.Context.instance()

    def __call__(self, command: str, **args) -> dict:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, self.cfg.curve_keys)
        address = self.cfg.address(self.cfg.control_port, connect=True)
        sock.connect(address)
        try:
            sock.send_multipart(encode(Message("command", meta={"command": command, "args": args})))
            if not sock.poll(self.timeout_s * 1000):
                raise PipelineUnavailable(f"no pipeline answered on {address} within {self.timeout_s:g} s; is it running?")
            reply = decode(sock.recv_multipart()).meta["reply"]
        finally:
            sock.close(linger=0)
        if not reply.get("ok"):
            raise NSBlueskyError(f"pipeline refused {command!r}: {reply.get('error')}")
        return reply

    def status(self) -> dict:
        return self("status")["status"]

    def wait_ready(self, timeout_s: float = 30.0) -> dict:
        """Until every module has the workers it wants (or raise)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if all(len(m["workers"]) >= m["wanted_workers"] for m in last["modules"].values()):
                    return last
            except PipelineUnavailable:
                pass
            time.sleep(0.1)
        raise PipelineUnavailable(f"pipeline not ready after {timeout_s:g} s; last status: {last}")


class IngestClient:
    """Send data messages to the handler; each is kept until the handler acknowledges it.

    ``send`` never blocks longer than the socket's high-water mark allows;
    ``unacked`` is what the handler has not confirmed yet (resent by ``resend``).
    """

    def __init__(self, cfg: PipelineConfig, *, context: zmq.Context | None = None, window: int = 64):
        self.cfg, self.window = cfg, window
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure_client(self.sock, cfg.curve_keys)
        self.sock.connect(cfg.address(cfg.ingest_port, connect=True))
        self.unacked: dict[tuple[str, str, int], Message] = {}
        self.acked = 0
        self.nacks: list[dict] = []

    def send(self, msg: Message, timeout_s: float = 30.0) -> None:
        """Send, waiting for acknowledgements while more than ``window`` are outstanding."""
        self.sock.send_multipart(encode(msg), copy=False)
        self.unacked[(msg.kind, msg.run, msg.seq)] = msg
        deadline = time.monotonic() + timeout_s
        while len(self.unacked) > self.window:
            if not self.poll(min(0.5, max(deadline - time.monotonic(), 0))):
                if time.monotonic() > deadline:
                    raise PipelineUnavailable(f"{len(self.unacked)} messages unacknowledged for {timeout_s:g} s")

    def poll(self, timeout_s: float = 0.0) -> int:
        """Collect acknowledgements; returns how many arrived."""
        n = 0
        while self.sock.poll(timeout_s * 1000 if n == 0 else 0):
            try:
                reply = decode(self.sock.recv_multipart())
            except ProtocolError:
                continue
            if reply.kind == "ack":
                for kind, run, seq in reply.meta.get("keys", []):
                    if self.unacked.pop((kind, run, seq), None) is not None:
                        self.acked += 1
            else:  # refused: resending would be refused again, so it is recorded and dropped
                self.nacks.append(reply.meta)
                key = reply.meta.get("key")
                if isinstance(key, list) and len(key) == 3:
                    self.unacked.pop(tuple(key), None)
            n += 1
        return n

    def flush(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            self.poll(0.1)
        if self.unacked:
            raise PipelineUnavailable(f"{len(self.unacked)} messages unacknowledged after {timeout_s:g} s")

    def close(self) -> None:
        self.sock.close(linger=0)
