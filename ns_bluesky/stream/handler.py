"""The handler: routes, balances and tracks; does no science.

Four sockets (defaults in README): control (ROUTER; REQ clients send commands),
ingest (ROUTER; every data message is acknowledged or refused with a reason),
workers (ROUTER; load-balancing with READY credits and heartbeats, zguide
``lbbroker``/``ppqueue``), results (PUB; topic = stage).

Guarantees: every ingested item is dispatched until a worker reports it done; a
worker that misses heartbeats has its items re-queued; results are published once
per (run, seq, stage), later copies are counted as suppressed duplicates; a
malformed message is counted by reason and answered, and the loop goes on; a run's
end reaches every module after all its items are done; abort drops a run's queued
items (counted as aborted) and its late results. Shared state (a dark's statistics)
reaches every worker that needs it, also one that registers later, before any item
that waits for it.

Like the zguide's Majordomo broker, the :class:`Handler` owns the sockets and the
poll loop and leaves the state to its parts (:mod:`.broker`): the scheduler (module
queues, worker records, credits, liveness), the run book (runs, the barrier before
shared state, the end level by level, abort), shared items, shared-memory slots, the
spill, ingest (decode, ack, nack) and control (commands, status).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

from ..errors import ParameterError
from .broker.control import Control
from .broker.ingest import Ingest
from .broker.runbook import RunBook, RunState
from .broker.scheduler import Item, ModuleState, Scheduler, WorkerState
from .broker.shared import SharedItems
from .broker.slots import Slots
from .broker.spill import Spill
from .config import PipelineConfig, apply_launcher_args, load_config, parse_counts
from .launcher import LocalPool, WorkerLauncher
from .logs import setup_process_logging
from .priority import lower_priority
from .protocol import MAX_HEADER_BYTES, Message, ProtocolError, decode, encode
from .security import claim, ipc_path, server_security

log = logging.getLogger(__name__)

COPY_RESULTS_BELOW = 1 << 20  # results published from shared memory by copy below this size, zero-copy above
MAX_WORKERS_PER_MODULE = 256  # the most 'pipeline scale' asks for
SUBSCRIPTION_BYTES = 4096  # what a SUB sends the results port: a topic to (un)subscribe
HOUSEKEEPING_S = 0.02  # heartbeats, expiry and the local pool are looked after this often


def make_launcher(cfg: PipelineConfig, worker_port: int) -> WorkerLauncher:
    """The configuration's launcher (``launcher = "local" | "slurm"``): the handler sees only the interface."""
    if cfg.launcher == "slurm":
        from .slurm import SlurmPool

        return SlurmPool(cfg, worker_port)
    return LocalPool(cfg, worker_port)


class Handler:
    def __init__(self, cfg: PipelineConfig, *, context: zmq.Context | None = None, spawn: bool = True):
        self.cfg = cfg
        self.ctx = context or zmq.Context.instance()
        modules = {spec.name: ModuleState(spec, cfg.inputs_of(spec)) for spec in cfg.modules}
        self.malformed: Counter = Counter()
        self.counts: Counter = Counter()
        self._shutdown = False
        self.slots = Slots(bool(cfg.shm_slot_mb))
        self.scheduler = Scheduler(
            modules, send_item=self._send_item, post=self._post, slots=self.slots,
            lost=lambda item: self.book.broadcast_done(item),  # a start or stop that died with its worker
        )
        self.shared = SharedItems(self.scheduler)
        self.book = RunBook(
            self.scheduler, self.shared, levels=[[modules[name] for name in level] for level in cfg.levels()],
            wait_timeout_s=cfg.wait_timeout_s, publish=self._publish, counts=self.counts, max_open_runs=cfg.max_open_runs,
            start_timeout_s=cfg.run_start_timeout_s, idle_timeout_s=cfg.run_idle_timeout_s,
        )
        self.spill = Spill(Path(cfg.spill_dir) if cfg.spill_dir else Path(os.environ.get("TMPDIR", "/tmp")) / f"ns-bluesky-spill-{os.getpid()}")
        self._secure = server_security(cfg, self.ctx)
        self.ports: dict[str, int] = {}
        self._ipc_files: list[Path] = []  # removed at close (libzmq's own removal needs a context term we may not reach)
        # libzmq refuses a part larger than its socket's limit before buffering it, and drops that peer
        self.control = self._bind("control", zmq.ROUTER, cfg.control_port, MAX_HEADER_BYTES)
        self.ingest = self._bind("ingest", zmq.ROUTER, cfg.ingest_port, cfg.max_array_bytes)
        self.backend = self._bind("workers", zmq.ROUTER, cfg.worker_port, cfg.max_array_bytes)
        self.results = self._bind("results", zmq.PUB, cfg.results_port, SUBSCRIPTION_BYTES)  # takes subscriptions only
        # a stalled subscriber (a frozen GUI) may hold at most this many results (about 1 GB of raw frames);
        # beyond that PUB drops for that subscriber only, never blocking the pipeline
        self.results.setsockopt(zmq.SNDHWM, 400)
        self.pool = make_launcher(cfg, self.ports["workers"]) if spawn else None
        self.intake = Ingest(self.ingest.send_multipart, self._accept, self.malformed, self.counts)
        self.commands = Control(self)

    def _bind(self, name: str, kind: int, port: int, max_bytes: int) -> zmq.Socket:
        """Bind one socket: an ipc file in the private directory (no keys) or TCP with CURVE (``security``)."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self._secure(sock)
        if self.cfg.curve_keys:
            if port == 0:
                port = sock.bind_to_random_port(f"tcp://{self.cfg.host}")
            else:
                sock.bind(self.cfg.address(port))
        else:
            if port == 0:  # a name no live pipeline holds (tests, side-by-side pipelines)
                port = next(p for p in iter(lambda: secrets.randbelow(40000) + 20000, None) if not ipc_path(self.cfg, p).exists())
            path = ipc_path(self.cfg, port)
            claim(path)
            sock.bind(self.cfg.address(port))
            os.chmod(path, 0o600)  # the directory already keeps others out; the file too
            self._ipc_files.append(path)
        self.ports[name] = port
        return sock

    # ---------------------------------------------------------------- helpers
    def _send_item(self, worker: WorkerState, item: Item) -> None:
        msg = item.msg if item.spill is None else self.spill.take(item)
        msg.meta["item"] = item.id
        msg.meta.pop("slot", None)
        placer = self.slots.place(worker, item, msg)
        if placer is not None:
            self.scheduler.modules[item.module].counts["shared_memory"] += 1
        self.backend.send_multipart([worker.identity, *encode(msg, placer)], copy=False)

    def _post(self, identity: bytes, frames: list) -> None:
        self.backend.send_multipart([identity, *frames])

    def _publish(self, msg: Message, topic: str | None = None) -> None:
        self.results.send_multipart([(topic or msg.stage or msg.kind).encode(), *encode(msg)], copy=False)

    # ---------------------------------------------------------------- ingest (decoded and acknowledged by Ingest)
    def _accept(self, msg: Message) -> None:
        run = self.book.accept(msg)
        if run is not None:
            for mod in self.scheduler.consumers.get(msg.kind, ()):
                self._enqueue(mod, run, msg)

    def _enqueue(self, mod: ModuleState, run: RunState, msg: Message) -> None:
        item = self.book.enqueue(mod, run, msg)
        if item is not None and mod.backlog() > self.cfg.backlog_items:
            self.spill.put(item)
            mod.counts["spilled"] += 1

    # ---------------------------------------------------------------- workers
    def _on_worker(self, frames: list) -> None:
        identity, payload = bytes(frames[0]), frames[1:]
        worker = self.scheduler.worker(identity)
        try:
            msg = decode(payload, shm=worker.arena.buf if worker is not None and worker.arena is not None else None)
        except ProtocolError as exc:
            self.malformed[f"worker:{exc.reason}"] += 1
            log.warning("malformed message from a worker (%s)", exc)
            return
        now = time.monotonic()
        if msg.kind == "ready":
            self._register(identity, msg, now)
            return
        if worker is not None:
            worker.last_seen = now
        # a purged worker gets no heartbeats from us, so it reconnects and says READY again
        if msg.kind == "heartbeat":
            return
        item_id = msg.meta.get("item", -1)
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            self.malformed["worker:bad-item"] += 1
            return
        item = self.scheduler.items.get(item_id)
        if msg.kind == "result":
            self._on_result(msg, item, payload, worker)
        if worker is None:
            return  # an unregistered peer answers for nothing
        if msg.kind in ("done", "error") or msg.meta.get("done"):
            self._on_done(msg, item, worker, now)

    def _register(self, identity: bytes, msg: Message, now: float) -> None:
        name, credits, pid = msg.meta.get("module"), msg.meta.get("credits"), msg.meta.get("pid", 0)
        if not isinstance(name, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in (credits, pid)) or not 0 < credits <= 64:
            self.malformed["worker:bad-ready"] += 1
            return
        mod = self.scheduler.modules.get(name)
        if mod is None:
            self.malformed["unknown-module"] += 1
            log.warning("worker for unknown module %r refused", name)
            self._post(identity, encode(Message("control", meta={"command": "shutdown"})))
            return
        if identity not in mod.workers and len(mod.workers) >= MAX_WORKERS_PER_MODULE:
            self.counts["workers_refused"] += 1
            log.warning("worker pid %d for %s refused: %d workers already registered", pid, name, len(mod.workers))
            self._post(identity, encode(Message("control", meta={"command": "shutdown"})))
            return
        if credits > mod.spec.credits:  # dispatch favours credits: a peer claiming many would take every item
            self.counts["credits_capped"] += 1
            log.warning("worker pid %d for %s claimed %d credits; capped at the module's %d", pid, name, credits, mod.spec.credits)
            credits = mod.spec.credits
        job, host = msg.meta.get("job"), msg.meta.get("host")
        job = job if isinstance(job, str) and job else None
        draining = self.pool is not None and self.pool.is_draining(pid, job)  # scaled down before it registered
        worker = self.scheduler.add(identity, name, pid, credits, now, shm=msg.meta.get("shm"), draining=draining,
                                    job=job, host=host if isinstance(host, str) else "")
        self.shared.replay(worker, mod)  # state first: items that need it follow
        self.book.replay(worker, mod)

    def _on_result(self, msg: Message, item: Item | None, frames: list, worker: WorkerState | None) -> None:
        if item is not None and (worker is None or item.worker != worker.identity or msg.run != item.run
                                 or msg.stage not in self.scheduler.modules[item.module].outputs):
            # only the worker the item went to answers for it: for the item's run, with its module's stages
            self.counts["foreign_results"] += 1
            n = self.counts["foreign_results"]
            if n <= 10 or n % 1000 == 0:  # a flood of them must not flood the log too
                log.warning("result %s for item %d (run %s seq %s) from %s does not answer an item sent there; dropped (%d so far)",
                            msg.stage, item.id, msg.run[:8], msg.seq, f"worker pid {worker.pid}" if worker else "an unregistered peer", n)
            return
        run = self.book.runs.get(msg.run)
        if run is None or run.aborted or run.ended or item is None:  # an ended run forgot which results it had
            self.counts["late_results"] += 1
            return
        if msg.key in run.published:
            self.scheduler.modules[item.module].counts["duplicates"] += 1
            return
        run.published.add(msg.key)
        self._route(msg, run, worker)
        if worker is None or worker.arena is None or item.worker != worker.identity or len(frames) - 1 == len(msg.arrays):
            # forward the worker's frames as they came (already validated): no re-encoding, no copy
            self.results.send_multipart([msg.stage.encode(), *frames], copy=False)
            return
        parts = [msg.stage.encode(), *encode(msg)]
        if sum(a.nbytes for a in msg.arrays.values()) < COPY_RESULTS_BELOW:  # a memcpy is cheaper than tracking
            self.results.send_multipart(parts, copy=True)
            return
        # large arrays in the worker's segment: sent zero-copy and tracked; the slot is reused once zmq is done
        for part in parts[:-1]:
            item.trackers.append(self.results.send(part, zmq.SNDMORE, copy=False, track=True))
        item.trackers.append(self.results.send(parts[-1], 0, copy=False, track=True))

    def _route(self, msg: Message, run: RunState, worker: WorkerState | None) -> None:
        """Queue a result for the modules that consume its stage (counted in the run before its producer's done)."""
        consumers = self.scheduler.consumers.get(msg.stage)
        if not consumers:
            return
        arrays = msg.arrays
        if worker is not None and worker.arena is not None and any(worker.arena.locate(a) is not None for a in arrays.values()):
            arrays = {k: np.array(a) for k, a in arrays.items()}  # the producer's slot is reused soon
        item_msg = Message("result", run=msg.run, seq=msg.seq, stage=msg.stage, meta={k: v for k, v in msg.meta.items() if k not in ("item", "done")}, arrays=arrays)
        if msg.stage in self.shared.stages:
            self.shared.share(item_msg)
            self.book.release_held()
            return
        for mod in consumers:
            self._enqueue(mod, run, item_msg)

    def _on_done(self, msg: Message, item: Item | None, worker: WorkerState | None, now: float) -> None:
        if item is None or worker is None or item.id not in worker.in_flight:
            return  # from a purged worker: the item was re-queued and finishes elsewhere
        error = msg.kind == "error"
        self.scheduler.finish(worker, item, now, error=error, aborted=bool(msg.meta.get("aborted")))
        run = self.book.runs.get(item.msg.run if item.msg else msg.run)
        if error:
            self._publish(
                Message("error", run=msg.run, seq=msg.seq, stage=item.module, meta={k: msg.meta.get(k) for k in ("item", "error", "traceback")}),
                topic="error",
            )
        if item.broadcast:
            self.book.broadcast_done(item)
            return
        if run is not None:
            self.book.item_done(run)

    def abort(self, run_id: str | None = None) -> int:
        """Drop queued items of one run (or all), refuse late results, tell every worker."""
        dropped = self.book.abort(run_id)
        for item in dropped:
            self.spill.discard(item)
        return len(dropped)

    # ---------------------------------------------------------------- control (answered by Control)
    def _on_control(self, frames: list) -> None:
        self.control.send_multipart(self.commands.answer(frames))

    def stop(self) -> None:
        """Leave the poll loop (and close) after the current round."""
        self._shutdown = True

    # ---------------------------------------------------------------- loop
    def _housekeeping(self, now: float) -> None:
        for run in self.book.expired():
            self.abort(run.run)
        self.book.prune()
        self.book.release_held()
        self.scheduler.check_liveness(now, self.cfg.heartbeat_s * self.cfg.liveness)
        self.scheduler.heartbeat(now, self.cfg.heartbeat_s)
        if self.pool is not None:
            self.pool.reconcile({name: mod.spec.workers for name, mod in self.scheduler.modules.items()}, self.scheduler.drain)

    def _guard(self, port: str, handle, sock: zmq.Socket) -> None:
        """One message, whatever it holds: a failure is counted and logged, the loop goes on."""
        frames = sock.recv_multipart(copy=False)
        try:
            handle(frames)
        except Exception:
            self.malformed[f"{port}:internal"] += 1
            log.exception("message on the %s port could not be handled; the handler goes on", port)

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.control, self.ingest, self.backend):
            poller.register(sock, zmq.POLLIN)
        log.info("handler pid %d on %s ports %s", os.getpid(), self.cfg.host, self.ports)
        last_housekeeping = 0.0
        try:
            while not self._shutdown:
                events = dict(poller.poll(self.cfg.heartbeat_s * 1000 / 2))
                if self.backend in events:
                    for _ in range(1000):
                        if not self.backend.poll(0):
                            break
                        self._guard("worker", self._on_worker, self.backend)
                if self.ingest in events:
                    for _ in range(200):
                        if not self.ingest.poll(0):
                            break
                        self._guard("ingest", self.intake.receive, self.ingest)
                    self.intake.flush()
                if self.control in events:
                    self._guard("control", self._on_control, self.control)
                self.scheduler.dispatch()
                now = time.monotonic()
                if now - last_housekeeping >= HOUSEKEEPING_S:  # not per message: at 2000 messages/s it adds up
                    self._housekeeping(now)
                    last_housekeeping = now
        finally:
            self.close()

    def close(self) -> None:
        bye = encode(Message("control", meta={"command": "shutdown"}))
        for worker in self.scheduler.workers():
            try:
                self.backend.send_multipart([worker.identity, *bye])
            except zmq.ZMQError:
                pass
        if self.pool is not None:
            self.pool.stop_all()
        for sock in (self.control, self.ingest, self.backend, self.results):
            sock.close(linger=0)
        for path in self._ipc_files:
            path.unlink(missing_ok=True)
        for worker in self.scheduler.workers():
            self.slots.retire(worker)
        self.slots.close()
        self.spill.clear()
        log.info("handler stopped")


def _stop_when_orphaned(parent: int, every_s: float = 0.5) -> None:
    """A private pipeline ends with its program, even one killed with SIGKILL that could not stop it: a watcher
    thread sends this process SIGTERM (handled on the main thread, like ``pipeline stop``) once its parent is
    gone. Seen: a demo killed mid-start-up left its handler and workers running for hours."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("the program that started this pipeline (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ns-bluesky-handler", description="Run the streaming handler and its local workers.")
    p.add_argument("--config", default=None)
    p.add_argument("--workers", nargs="*", default=[])
    p.add_argument("--log-dir", default=None)
    p.add_argument(
        "--no-local-workers", action="store_true",
        help="start no workers here: they run elsewhere (e.g. the 'pipeline slurm-script' job) and connect",
    )
    p.add_argument("--launcher", choices=("local", "slurm"), default=None, help="start the workers as local processes or SLURM jobs")
    p.add_argument("--partition", default=None, help="SLURM partition of the worker jobs")
    p.add_argument("--account", default=None, help="SLURM account of the worker jobs")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop (as on SIGTERM) when the process that started this one dies: a program's private pipeline")
    args = p.parse_args(argv)
    cfg = load_config(args.config, parse_counts(args.workers))
    if args.log_dir:
        cfg.log_dir = args.log_dir
    apply_launcher_args(cfg, args.launcher, args.partition, args.account)
    setup_process_logging("handler", cfg.log_dir)
    if cfg.nice > 0:  # before the local workers start: they inherit it (its session's group too)
        lower_priority(os.getpid(), os.getpriority(os.PRIO_PROCESS, 0) + cfg.nice)
    try:
        handler = Handler(cfg, spawn=not args.no_local_workers)
        # SIGTERM (kill, systemd, a test's terminate) closes like 'pipeline stop': workers told, segments removed
        signal.signal(signal.SIGTERM, lambda *_: handler.stop())
        if args.exit_with_parent:
            _stop_when_orphaned(os.getppid())
        handler.serve()
    except (ParameterError, zmq.ZMQError) as exc:
        log.error("handler cannot start: %s", exc)
        print(f"ns-bluesky handler: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
