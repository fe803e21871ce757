"""Clients of the handler: the control port (commands) and the ingest port (data, acknowledged)."""

from __future__ import annotations

import logging
import threading
import time

import zmq

from ..errors import NSBlueskyError, ParameterError
from .config import PipelineConfig
from .protocol import MAX_HEADER_BYTES, Message, ProtocolError, decode, encode
from .security import secure_client

log = logging.getLogger(__name__)

RESEND_AFTER_S = 2.0  # a handler silent this long with messages outstanding gets them again


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
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES)  # a reply is one JSON header
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

    At most ``window`` messages are outstanding; ``send`` waits for acknowledgements
    beyond that, and a handler silent for ``resend_after_s`` (restarted, or down for a
    while) gets every unacknowledged message again, in order; it drops repeats. With
    ``immediate`` (the bridge), messages wait here rather than in a socket queue while
    no handler is connected, so nothing piles up twice and ``send`` never blocks.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        context: zmq.Context | None = None,
        window: int = 64,
        immediate: bool = False,
        resend_after_s: float = RESEND_AFTER_S,
    ):
        self.cfg, self.window, self.resend_after_s = cfg, window, resend_after_s
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES)  # acks and nacks: one JSON header each
        if immediate:
            self.sock.setsockopt(zmq.IMMEDIATE, 1)
        secure_client(self.sock, cfg.curve_keys)
        self.sock.connect(cfg.address(cfg.ingest_port, connect=True))
        self.unacked: dict[tuple[str, str, int], Message] = {}
        self.acked = 0
        self.nacks: list[dict] = []
        self._stalled = False  # a message could not be handed to the socket: later ones wait behind it
        self._last_heard = time.monotonic()

    def send(self, msg: Message, timeout_s: float | None = 30.0, cancel: threading.Event | None = None) -> None:
        """Keep and send ``msg``, first waiting while ``window`` messages are unacknowledged.

        Raises :class:`PipelineUnavailable` after ``timeout_s`` without room (``None``: wait
        until there is room or ``cancel`` is set).
        """
        self.check_size(msg)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self.unacked) >= self.window and not (cancel is not None and cancel.is_set()):
            wait = self.resend_after_s if deadline is None else min(self.resend_after_s, max(deadline - time.monotonic(), 0))
            if not self.poll(wait):
                if deadline is not None and time.monotonic() >= deadline:
                    raise PipelineUnavailable(f"{len(self.unacked)} messages unacknowledged for {timeout_s:g} s")
                self.resend()
        self.unacked[(msg.kind, msg.run, msg.seq)] = msg
        if not self._stalled:  # order matters: behind an undelivered message, this one waits its turn
            self._stalled = not self._try_send(msg)

    def check_size(self, msg: Message) -> None:
        """Refuse here what the handler's socket would refuse by dropping the connection (and every message
        in flight on it, resent and dropped again): an array over ``max_array_mb``."""
        for name, arr in msg.arrays.items():
            if arr.nbytes > self.cfg.max_array_bytes:
                raise ParameterError(f"{msg.kind} {msg.run[:8]} seq {msg.seq}: array {name!r} of {arr.nbytes} bytes is over the "
                                     f"pipeline's max_array_mb = {self.cfg.max_array_mb:g}; raise it in the pipeline config")

    def _try_send(self, msg: Message) -> bool:
        try:
            self.sock.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def resend(self) -> None:
        """Send every unacknowledged message again, in the order they were first sent."""
        if self.unacked:
            log.warning("pipeline silent; resending %d unacknowledged messages", len(self.unacked))
        self._stalled = False
        self._last_heard = time.monotonic()
        for msg in list(self.unacked.values()):
            if not self._try_send(msg):
                self._stalled = True
                break

    def tick(self) -> None:
        """Collect acknowledgements; resend if the handler has been silent too long."""
        if not self.poll(0) and self.unacked and time.monotonic() - self._last_heard > self.resend_after_s:
            self.resend()

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
        if n:
            self._last_heard = time.monotonic()
        return n

    def flush(self, timeout_s: float = 30.0) -> None:
        """Until every message is acknowledged (resending to a silent handler), or raise."""
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            self.poll(0.1)
            self.tick()
        if self.unacked:
            raise PipelineUnavailable(f"{len(self.unacked)} messages unacknowledged after {timeout_s:g} s")

    def close(self) -> None:
        self.sock.close(linger=0)
