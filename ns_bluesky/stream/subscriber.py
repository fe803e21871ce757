"""A thread on the handler's results port: what the recorder and the live monitor have in common.

A subclass handles each decoded message in ``_on_message``; an unreadable message or a
failure in its handling is logged and counted (``rejected``), never fatal: a subscriber
must outlive any one bad result.
"""

from __future__ import annotations

import logging
import threading

import zmq

from ns_bluesky.stream.config import PipelineConfig
from ns_bluesky.stream.protocol import Message, ProtocolError, decode
from ns_bluesky.stream.security import secure_client

log = logging.getLogger(__name__)


class ResultsSubscriber:
    """Subscribe to every result topic on a thread; ``close()`` stops it."""

    def __init__(self, cfg: PipelineConfig, *, name: str):
        self.cfg = cfg
        self.rejected = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _on_message(self, msg: Message) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_array_bytes)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(sock, self.cfg.curve_keys)
        sock.connect(self.cfg.address(self.cfg.results_port, connect=True))
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    frames = sock.recv_multipart(copy=False)
                    try:
                        self._on_message(decode(frames[1:]))
                    except ProtocolError as exc:
                        self.rejected += 1
                        log.warning("%s: unreadable result dropped: %s", self._thread.name, exc)
                    except Exception:
                        self.rejected += 1
                        log.exception("%s: result not handled; going on", self._thread.name)
        finally:
            sock.close(linger=0)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
