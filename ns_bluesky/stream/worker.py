"""Worker process: owns the socket, the heartbeats and the control commands; a stage only computes.

Paranoid-Pirate style (zguide ``ppworker``), with its known flaw fixed: the module's
``process`` runs on a compute thread, so a long computation never starves the
heartbeats and the handler never mistakes a busy worker for a dead one. The I/O
loop (main thread) sends READY with its credits, forwards work to the compute
thread and its results back, and reconnects with back-off when the handler stops
answering. An exception in the module is reported (module, run, seq, traceback)
and the worker goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable

import numpy as np
import zmq

from .logs import setup_process_logging
from .protocol import Message, ProtocolError, decode, encode
from .shm import IN, OUT, Placer, SlotArena
from .stage import Stage, load_stage

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.25
HANDLER_LIVENESS = 12  # missed handler heartbeats before reconnecting
RECONNECT_MAX_S = 4.0


def _as_list(out) -> list[Message]:
    if out is None:
        return []
    if isinstance(out, Message):
        return [out]
    return list(out)


class Worker:
    """Serve one stage to a handler until told to shut down.

    The worker builds its stage, handing it the two things a stage may ask of the worker:
    ``emit`` (a result before the item ends) and the live set of aborted runs.
    """

    def __init__(
        self,
        stage: type[Stage],
        address: str,
        *,
        params=None,
        name: str | None = None,
        credits: int = 2,
        context: zmq.Context | None = None,
        curve: dict | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        liveness: int = HANDLER_LIVENESS,
        shm_slot_bytes: int = 0,
        parent_pid: int | None = None,
        idle: bool = False,
        give_up_s: float | None = None,
        max_array_bytes: int = 64 * 2**20,
    ):
        self.address, self.credits = address, credits
        self.idle = idle  # the compute thread only: registration and heartbeats keep their normal share
        self.name = name or stage.name  # the pipeline's name for the stage: what the handler routes by
        self.heartbeat_s, self.liveness = heartbeat_s, liveness
        self.max_array_bytes = max_array_bytes  # the handler drops a peer that sends a larger part: refused here, with the reason
        self.ctx = context or zmq.Context.instance()
        self.curve = curve
        self._work: queue.Queue = queue.Queue()
        self._aborted: set[str] = set()
        self._current: tuple[zmq.Socket, int] | None = None  # the item being computed: where emit() sends
        self._stop = threading.Event()
        self._pipe_addr = f"inproc://worker-results-{id(self)}"
        self.processed = 0
        self.errors = 0
        self.parent_pid = parent_pid  # a local worker ends with the handler that started it
        self.give_up_s = give_up_s  # a SLURM job ends once its handler has been gone this long (not held until its time limit)
        self.arena: SlotArena | None = None
        self.stage = stage(params, emit=self._emit_current, aborted=self._aborted)
        if shm_slot_bytes:
            try:
                self.arena = SlotArena.create(2 * credits + 2, shm_slot_bytes)  # results still being published hold theirs
            except Exception as exc:  # no /dev/shm room: TCP only, slower but whole
                log.warning("no shared memory for this worker (%s); frames come over TCP", exc)

    # compute thread -------------------------------------------------------
    def _compute(self) -> None:
        if self.idle:
            _run_when_idle()
        out = self.ctx.socket(zmq.PAIR)
        out.connect(self._pipe_addr)
        try:
            while not self._stop.is_set():
                try:
                    item_id, msg = self._work.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    self._handle(out, item_id, msg)
                except Exception:  # never let the compute thread die while heartbeats go on
                    log.exception("worker failed to answer item %s", item_id)
        finally:
            out.close(linger=0)

    def _handle(self, out: zmq.Socket, item_id: int, msg: Message) -> None:
        if item_id < 0:  # the abort marker: the module forgets the run
            self.stage.abort_run(msg.run)
            return
        if msg.run in self._aborted and msg.kind != "start":
            self._send_done_aborted(out, item_id, msg)
            return
        self._current = (out, item_id)
        try:
            if msg.kind == "start":
                self._aborted.discard(msg.run)
                results = _as_list(self.stage.start_run(msg))
            elif msg.kind == "stop":
                results = _as_list(self.stage.end_run(msg.run))
            else:
                results = _as_list(self.stage.process(msg))
            if msg.kind != "start" and msg.run in self._aborted:  # aborted while computing: nothing to send
                self._send_done_aborted(out, item_id, msg)
                return
            slot = msg.meta.get("slot")
            placer = Placer(self.arena, slot, OUT, reuse_half=IN) if self.arena is not None and slot is not None else None
            encoded = []
            for k, result in enumerate(results):  # encode all before sending any: all or nothing
                if not isinstance(result, Message):
                    raise TypeError(f"{self.name} returned {type(result).__name__}, not a Message")
                if result.kind == "result" and result.stage not in self.stage.outputs:
                    raise ValueError(f"{self.name} returned stage {result.stage!r}, not one of its outputs {self.stage.outputs}")
                self._check_size(result)
                result.meta["item"] = item_id
                if k == len(results) - 1:
                    result.meta["done"] = True  # the last result also returns the credit: one message less
                encoded.append(encode(result, placer))
        except Exception as exc:
            self.errors += 1
            tb = traceback.format_exc()
            log.error("module %s failed on run %s seq %s:\n%s", self.name, msg.run, msg.seq, tb)
            self._send(
                out,
                Message("error", run=msg.run, seq=msg.seq, meta={"item": item_id, "error": repr(exc)[:500], "traceback": tb[-4000:]}),
            )
            return
        self.processed += 1
        for frames in encoded:
            out.send_multipart(frames, copy=False)
        if not encoded:
            self._send(out, Message("done", run=msg.run, seq=msg.seq, meta={"item": item_id}))

    def _emit_current(self, result: Message) -> None:
        """A result sent ahead of the item's end (the item's credit comes back with its last result)."""
        if self._current is None:
            raise RuntimeError(f"{self.name}: emit() outside start_run/process/end_run")
        out, item_id = self._current
        if not isinstance(result, Message) or result.kind != "result" or result.stage not in self.stage.outputs:
            raise ValueError(f"{self.name}: emit() takes a result of one of its stages {self.stage.outputs}")
        self._check_size(result)
        result.meta["item"] = item_id
        out.send_multipart(encode(result), copy=False)

    def _check_size(self, result: Message) -> None:
        for name, arr in result.arrays.items():
            if np.asarray(arr).nbytes > self.max_array_bytes:
                raise ValueError(f"{self.name}: result array {name!r} of {np.asarray(arr).nbytes} bytes is over the pipeline's "
                                 f"max_array_mb ({self.max_array_bytes / 2**20:g} MiB); raise max_array_mb")

    @staticmethod
    def _send(sock: zmq.Socket, msg: Message) -> None:
        sock.send_multipart(encode(msg), copy=False)

    # I/O loop ---------------------------------------------------------------
    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_array_bytes)
        if self.curve:
            sock.curve_secretkey = self.curve["secret"]
            sock.curve_publickey = self.curve["public"]
            sock.curve_serverkey = self.curve["server"]
        sock.connect(self.address)
        meta = {"module": self.name, "credits": self.credits, "pid": os.getpid(), "host": socket.gethostname()}
        if os.environ.get("SLURM_JOB_ID"):  # the handler's launcher knows its workers by job
            meta["job"] = os.environ["SLURM_JOB_ID"]
        if self.arena is not None:
            meta["shm"] = {"name": self.arena.name, "slots": self.arena.slots, "slot_bytes": self.arena.slot_bytes}
        ready = Message("ready", meta=meta)
        self._send(sock, ready)
        return sock

    def _drop_queued(self, run: str, sock: zmq.Socket) -> None:
        """Answer the handler for every queued item of an aborted run (so their credits come back)."""
        kept = []
        while True:
            try:
                item_id, msg = self._work.get_nowait()
            except queue.Empty:
                break
            if msg.run == run and msg.kind != "start":
                self._send_done_aborted(sock, item_id, msg)
            else:
                kept.append((item_id, msg))
        for entry in kept:
            self._work.put(entry)

    def _send_done_aborted(self, sock: zmq.Socket, item_id: int, msg: Message) -> None:
        self._send(sock, Message("done", run=msg.run, seq=msg.seq, meta={"item": item_id, "aborted": True}))

    def serve(self) -> None:
        pipe = self.ctx.socket(zmq.PAIR)
        pipe.bind(self._pipe_addr)
        compute = threading.Thread(target=self._compute, name="compute", daemon=True)
        compute.start()
        sock = self._connect()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        last_sent = last_heard = heard_at = time.monotonic()
        hb = self.heartbeat_s
        backoff = hb
        log.info("worker %s pid %d connected to %s", self.name, os.getpid(), self.address)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(hb * 1000 / 2))
                now = time.monotonic()
                if pipe in events:
                    while pipe.poll(0):
                        sock.send_multipart(pipe.recv_multipart(copy=False), copy=False)
                        last_sent = now
                if sock in events:
                    while sock.poll(0):
                        last_heard = heard_at = now
                        backoff = hb
                        self._on_message(sock.recv_multipart(copy=False), sock)
                if now - last_sent >= hb:
                    self._send(sock, Message("heartbeat", meta={"module": self.name, "pid": os.getpid()}))
                    last_sent = now
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("the handler that started this worker is gone; exiting")
                    break
                if self.give_up_s is not None and now - heard_at > self.give_up_s:
                    log.warning("handler silent for %.0f s; giving up", now - heard_at)
                    break
                if now - last_heard > hb * self.liveness:
                    log.warning("handler silent for %.1f s; reconnecting in %.1f s", now - last_heard, backoff)
                    poller.unregister(sock)
                    sock.close(linger=0)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    sock = self._connect()
                    poller.register(sock, zmq.POLLIN)
                    last_heard = time.monotonic()
        finally:
            self._stop.set()
            compute.join(timeout=5)
            sock.close(linger=0)
            pipe.close(linger=0)
            if self.arena is not None:
                self.arena.unlink()
                self.arena.close()
            log.info("worker %s pid %d stopped: %d processed, %d errors", self.name, os.getpid(), self.processed, self.errors)

    def _on_message(self, frames: Iterable, sock: zmq.Socket) -> None:
        try:
            msg = decode(list(frames), shm=self.arena.buf if self.arena is not None else None)
        except ProtocolError as exc:
            log.error("malformed message from the handler dropped: %s", exc)
            return
        if "slot" in msg.meta and self.stage.keeps_inputs:  # the slot is rewritten once this item is done
            msg.arrays = {k: np.array(v) for k, v in msg.arrays.items()}
        if msg.kind == "heartbeat":
            return
        if msg.kind == "control":
            command = msg.meta.get("command")
            if command == "abort":
                self._aborted.add(msg.run)
                self._drop_queued(msg.run, sock)
                self._work.put((-1, msg))  # abort_run runs on the compute thread, in order with the items
            elif command == "shutdown":
                self._stop.set()
            return
        if "item" in msg.meta:
            self._work.put((int(msg.meta["item"]), msg))
            return
        log.error("unexpected %s message from the handler dropped", msg.kind)


def _run_when_idle() -> None:
    """SCHED_IDLE for the calling thread (Linux schedules threads; the threads it starts inherit it): it gets a
    core only when no other thread wants one. Nice 10 still left the reconstruction 8 % of a rate-0 scan's
    frames/s on 2 cores (45 vs 49 frames/s). Only the compute thread: set for the whole process, the imports,
    registration and heartbeats starved too, and on a busy host the worker never joined (the pipeline's
    60 s readiness wait ran out with 3 busy processes on 2 cores)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(19 - os.nice(0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ns-bluesky-worker", description="Serve one processing module to a handler.")
    p.add_argument("--module", required=True, help="stage type: an installed stage's name or package.module:Class")
    p.add_argument("--name", default=None, help="the pipeline's name for this module (default: its type)")
    p.add_argument("--address", required=True, help="the handler's worker port: ipc:///tmp/ns-bluesky-UID/5562 (keyless), tcp://HOST:5562 (with --curve-keys)")
    p.add_argument("--params", default="{}", help="module parameters as JSON")
    p.add_argument("--credits", type=int, default=2)
    p.add_argument("--heartbeat-s", type=float, default=HEARTBEAT_S, help="the pipeline's heartbeat interval")
    p.add_argument("--liveness", type=int, default=HANDLER_LIVENESS, help="missed handler heartbeats before reconnecting")
    p.add_argument("--log-dir", default=None)
    p.add_argument("--curve-keys", default=None, help="directory with client and server CURVE keys")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the process that started this one dies")
    p.add_argument("--nice", type=int, default=0, help="lower this worker's CPU priority by this much (0-19)")
    p.add_argument("--idle", action="store_true", help="run only on CPU time nothing else wants (Linux SCHED_IDLE)")
    p.add_argument("--give-up-s", type=float, default=None, help="exit when the handler has been silent this long (default: keep trying)")
    p.add_argument("--max-array-mb", type=float, default=64.0, help="the pipeline's max_array_mb: the largest array a message may carry")
    p.add_argument("--shm-slot-bytes", type=int, default=0, help="share frames with a handler on this machine (0: TCP only)")
    args = p.parse_args(argv)
    name = args.name or args.module
    setup_process_logging(name, args.log_dir)
    if args.nice > 0:
        os.nice(min(args.nice, 19))  # before any thread starts: they inherit it
    cls = load_stage(args.module)
    params = cls.Params(**json.loads(args.params))
    curve = None
    if args.curve_keys:
        from .security import client_keys

        curve = client_keys(args.curve_keys)
    Worker(cls, args.address, params=params, name=name, credits=args.credits, curve=curve, heartbeat_s=args.heartbeat_s, liveness=args.liveness, shm_slot_bytes=args.shm_slot_bytes,
           parent_pid=os.getppid() if args.exit_with_parent else None, idle=args.idle, give_up_s=args.give_up_s,
           max_array_bytes=int(args.max_array_mb * 2**20)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
