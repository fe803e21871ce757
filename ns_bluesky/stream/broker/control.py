"""The control port's side: answer status, abort, reset, scale and stop; build the status.

A bad request is answered with the error, never raised: a control client cannot take
the handler down.
"""

from __future__ import annotations

import logging
import os
import time

from ..protocol import Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)

MODULE_COUNTS = ("received", "processed", "redispatched", "duplicates", "errors", "aborted", "spilled", "shared_memory", "held", "wait_timeouts")


class Control:
    """Commands and status of a handler.

    Reads and steers ``handler``'s ``scheduler``, ``book``, ``intake`` (client lag),
    ``malformed`` and ``counts`` counters, ``ports`` and ``pool`` (None: workers are
    started elsewhere), and calls its ``abort(run)`` and ``stop()``.
    """

    def __init__(self, handler):
        self.handler = handler
        self.started = time.monotonic()

    def answer(self, frames: list) -> list:
        """The reply to one request (ROUTER identity and REQ envelope first)."""
        identity, envelope, payload = bytes(frames[0]), [bytes(f) for f in frames[1:2]], frames[2:]
        try:
            msg = decode(payload)
            reply = self.command(msg.meta.get("command"), msg.meta.get("args") or {})
        except ProtocolError as exc:
            self.handler.malformed[f"control:{exc.reason}"] += 1
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bad command must never take the handler down
            log.exception("control command failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return [identity, *envelope, *encode(Message("reply", meta={"reply": reply}))]

    def command(self, command: str, args: dict) -> dict:
        h = self.handler
        modules = h.scheduler.modules
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "abort":
            t0 = time.monotonic()
            dropped = h.abort(args.get("run"))
            return {"ok": True, "dropped": dropped, "seconds": time.monotonic() - t0}
        if command == "reset":
            h.abort(None)
            h.book.runs.clear()
            for mod in modules.values():
                mod.counts.clear()
            h.malformed.clear()
            h.counts.clear()
            return {"ok": True}
        if command == "scale":
            if h.pool is None:
                return {"ok": False, "error": "this handler does not manage its workers"}
            counts = args.get("counts") or {}
            for name, n in counts.items():  # all checked before any is applied
                if name not in modules:
                    return {"ok": False, "error": f"no module {name!r}"}
                if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 256:
                    return {"ok": False, "error": f"worker count for {name!r} must be 0..256, got {n!r}"}
            for name, n in counts.items():
                modules[name].spec.workers = n
            return {"ok": True}
        if command == "stop":
            h.stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}; use status, abort, reset, scale or stop"}

    def status(self) -> dict:
        h, now = self.handler, time.monotonic()
        modules = {}
        for name, mod in h.scheduler.modules.items():
            in_flight = sum(len(w.in_flight) for w in mod.workers.values())
            modules[name] = {
                "module": mod.spec.module,
                "workers": [
                    {"pid": w.pid, "job": w.job, "host": w.host, "credits": w.credits, "in_flight": len(w.in_flight), "processed": w.processed, "last_heartbeat_s": round(now - w.last_seen, 3), "draining": w.draining}
                    for w in mod.workers.values()
                ],
                "wanted_workers": mod.spec.workers,
                "items_per_s": round(mod.rate(now), 2),
                "queue": len(mod.queue),
                "held": sum(map(len, mod.held.values())),
                "in_flight": in_flight,
                **{k: mod.counts.get(k, 0) for k in MODULE_COUNTS},
            }
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started, 1),
            "ports": h.ports,
            "launcher": h.pool.describe() if hasattr(h.pool, "describe") else {"kind": "none"},  # none: workers started elsewhere
            "malformed": dict(h.malformed),
            "client_lag": dict(h.intake.client_lag),
            "counts": {**h.counts, **({"shm_refused": h.scheduler.slots.refused} if h.scheduler.slots.refused else {})},
            "modules": modules,
            "runs": {
                r.run: {"frames": r.frames, "pending": r.pending, "stopping": r.stopping, "ended": r.ended, "aborted": r.aborted, **({"expired": r.expired} if r.expired else {})}
                for r in list(h.book.runs.values())[-20:]
            },
        }
