"""Scan at 10 Hz for 30 minutes and watch every process's memory and open files. Prints figures, writes JSON + PNG.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 10] [--scan 10x10] [--every 5] [--keep 3]
                                        [--out benchmark-soak]

One process (this one, "the command") does what ``ns-bluesky demo`` does, over and over: a RunEngine on the
simulated beamline (full-size 1040 x 1152 FCCD frames) takes darks once, then ``ptycho_scan`` after
``ptycho_scan`` until the time is up; every document goes through the spooled catalog writer into an embedded
catalog of the soak's own; the bridge streams every frame to a private pipeline (handler, 2 frame workers,
dark, STXM, reconstruction, CXI writer), whose results the session records as derived runs. After each scan
the soak waits for the pipeline's end of that run and checks the catalog: every event, a stop document, a
derived run. So that 30 minutes of 2.4 MB frames (43 GB at 10 Hz) fit the disk, runs older than the last
``--keep`` are deleted from the catalog with their files; the deleting is part of what is soaked.

Every ``--every`` seconds a thread samples, for this process and every process below it (the handler, each
worker, the catalog server), the resident memory (VmRSS) and the number of open file descriptors, from /proc.
The figures: growth per hour of RSS and of fds for each process (a least-squares line through the samples
after the first ``--warmup`` minutes, when imports, caches and pools have settled), and the frames per second
achieved from the first scan's start to the last derived run checked (the scans' own time and the waits
between them: the soak waits for scan k's derived run while scan k+1 runs, so the pipeline may fall one scan
behind and no further). ``soak.json`` holds every
sample; ``soak.png`` shows them. Passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLES = [  # (what a process's command line says, its name in the figures)
    (r"ns_bluesky\.stream\.handler", "handler"),
    (r"ns_bluesky\.io\.catalog_server", "catalog-server"),
    (r"ns_bluesky\.stream\.worker\b.*--name (\S+)", "worker:{0}"),
    (r"ns_bluesky\.stream\.worker", "worker"),
]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(d.name))
    return kids


def _tree(root: int) -> list[int]:
    kids, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def _role(pid: int, own: int) -> str | None:
    if pid == own:
        return "command"
    try:
        cmd = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except OSError:
        return None
    for pattern, name in ROLES:
        m = re.search(pattern, cmd)
        if m:
            return name.format(*m.groups())
    return None  # a helper (a shell, a compiler cache): not part of the pipeline


def sample(own: int) -> list[dict]:
    """RSS (MB) and open fds of every process of the pipeline below ``own``, and of ``own``."""
    rows = []
    for pid in _tree(own):
        role = _role(pid, own)
        if role is None:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, AttributeError):
            continue  # it ended between the listing and the read
        rows.append({"role": role, "pid": pid, "rss_mb": round(rss_kb / 1024, 2), "fds": fds})
    return rows


class Sampler(threading.Thread):
    def __init__(self, every_s: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        own = os.getpid()
        while not self.stop.is_set():
            t = round(time.monotonic() - self.t0, 2)
            self.samples.extend({"t_s": t, **row} for row in sample(own))
            self.stop.wait(self.every_s)


def growth(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """Per role: RSS and fds at the first and last sample, and their growth per hour after the warm-up
    (a least-squares line through each process's samples; the largest over the role's processes)."""
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for s in samples:
        by[(s["role"], s["pid"])].append(s)
    out: dict[str, dict] = {}
    for (role, pid), rows in sorted(by.items()):
        late = [r for r in rows if r["t_s"] >= warmup_s]
        fit = {}
        for key in ("rss_mb", "fds"):
            if len(late) >= 3 and late[-1]["t_s"] > late[0]["t_s"]:
                t_h = np.array([r["t_s"] for r in late]) / 3600
                fit[key] = float(np.polyfit(t_h, [r[key] for r in late], 1)[0])
        entry = {"pid": pid, "samples": len(rows), "rss_mb_first": rows[0]["rss_mb"], "rss_mb_last": rows[-1]["rss_mb"],
                 "rss_mb_max": max(r["rss_mb"] for r in rows), "fds_first": rows[0]["fds"], "fds_last": rows[-1]["fds"],
                 "rss_mb_per_hour": None if "rss_mb" not in fit else round(fit["rss_mb"], 2),
                 "fds_per_hour": None if "fds" not in fit else round(fit["fds"], 2)}
        key = role if role not in out else f"{role} (pid {pid})"  # a replaced worker: its own row
        out[key] = entry
    return out


def figure(path: Path, samples: list[dict], scans: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(18, 5), constrained_layout=True)
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for s in samples:
        by[(s["role"], s["pid"])].append(s)
    for (role, pid), rows in sorted(by.items()):
        t = [r["t_s"] / 60 for r in rows]
        ax[0].plot(t, [r["rss_mb"] for r in rows], label=f"{role} ({pid})")
        ax[1].plot(t, [r["fds"] for r in rows], label=f"{role} ({pid})")
    ax[0].set_ylabel("resident memory (MB)")
    ax[1].set_ylabel("open file descriptors")
    for a in ax[:2]:
        a.set_xlabel("minutes")
    ax[0].legend(fontsize=7)
    ax[2].plot([s["end_s"] / 60 for s in scans], [s["frames_per_s"] for s in scans], ".")
    ax[2].set_xlabel("minutes")
    ax[2].set_ylabel("frames/s of each scan")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _forget(cat, processed, uid: str, derived: str | None, files: list[Path]) -> None:
    """Delete an old run, its derived run and their files: what keeps 30 minutes of frames on the disk."""
    for node, key in ((cat, uid), (processed, derived)):
        if key is not None and key in node:
            node.delete_contents(key, recursive=True, external_only=False)
    for f in files:
        f.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--scan", default="10x10")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=None, help="minutes left out of the growth fit (default: a tenth)")
    ap.add_argument("--keep", type=int, default=3, help="scans kept in the catalog; older ones are deleted")
    ap.add_argument("--out", default="benchmark-soak")
    args = ap.parse_args()
    if not (args.minutes > 0 and args.rate > 0 and args.every > 0 and args.keep >= 1):
        ap.error("--minutes, --rate and --every must be > 0, --keep >= 1")
    from bluesky import RunEngine

    from ns_bluesky.apps.demo import parse_scan
    from ns_bluesky.apps.session import PipelineSession
    from ns_bluesky.callbacks.bridge import PipelineBridge
    from ns_bluesky.callbacks.spool import catalog_writer
    from ns_bluesky.instrument.scan import ScanPattern
    from ns_bluesky.io.catalog import close_catalogs, data_dir, open_catalog, writer_batch
    from ns_bluesky.io.catalog_layout import processed_of
    from ns_bluesky.ophyd_devices import make_sim_beamline
    from ns_bluesky.plans import dark_frames, ptycho_scan
    from ns_bluesky.sim.settings import SimConfig
    from ns_bluesky.stages.pipeline import ptycho_pipeline

    ny, nx = parse_scan(args.scan)
    root = Path(args.out).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    where, out = root / "catalog", root / "out"
    warmup_s = 60 * (args.warmup if args.warmup is not None else args.minutes / 10)
    print(f"benchmarks/soak.py: {args.minutes:g} min of {args.scan} scans at {args.rate:g} Hz, sampled every "
          f"{args.every:g} s; load {os.getloadavg()}", flush=True)
    sampler = Sampler(args.every)
    sampler.start()
    cfg = SimConfig(seed=0, exposure_s=min(0.1, 0.8 / args.rate), scan=ScanPattern(kind="raster", shape=(ny, nx), overlap=0.7))

    def say(line: str) -> None:
        print(f"  [{time.monotonic() - sampler.t0:7.1f} s] {line}", flush=True)

    cat = open_catalog(where)
    detectors = data_dir(where, cat)
    bl = make_sim_beamline(detectors, cfg, rate_hz=args.rate)
    pipe_cfg = ptycho_pipeline(frame_workers=2, out_dir=out, refine_s=1.0)
    batch = writer_batch(args.rate)
    writer = catalog_writer(where, batch_size=batch, say=say)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer)
    files: dict[str, list[Path]] = defaultdict(list)  # run uid -> the detector files its frames are in
    run_of: dict[str, str] = {}

    def note_files(name: str, doc: dict) -> None:
        if name == "start":
            run_of[doc["uid"]] = doc["uid"]
        elif name in ("resource", "stream_resource"):
            uri = doc.get("uri") or str(Path(doc.get("root", "/")) / doc.get("resource_path", ""))
            files[doc["run_start"]].append(Path(uri.removeprefix("file://localhost").removeprefix("file://")))

    RE.subscribe(note_files)
    scans: list[dict] = []
    lost = 0
    first_scan_at = 0.0
    t_end = time.monotonic() + 60 * args.minutes
    try:
        with PipelineSession(cat, None, pipe_cfg, out / "pipeline", detectors=detectors, progress=False,
                             batch_size=batch, catalog_target=where, say=say) as session:
            bridge = PipelineBridge(pipe_cfg)
            RE.subscribe(bridge)
            (dark_uid,) = RE(dark_frames(bl.fccd, bl.shutter, 4))
            first_scan_at = time.monotonic() - sampler.t0
            kept: list[tuple[str, str | None]] = []
            pending: list[tuple[str, float, float]] = []  # scans whose derived run is not yet checked

            def check(uid: str, t0: float, scan_s: float) -> None:
                nonlocal lost
                view = session.finish(uid, 300)
                writer.flush(300)
                derived = session.recorder.finished.get(uid)
                cat = writer.catalog  # the server that answers now
                stop = cat[uid].metadata.get("stop") or {}
                events = int((stop.get("num_events") or {}).get("primary", 0))
                lost += ny * nx - events
                row = {"scan": len(scans) + 1, "uid": uid[:8], "events": events, "exit_status": stop.get("exit_status"),
                       "derived": derived is not None, "processed": view.processed, "scan_s": round(scan_s, 2),
                       "end_s": round(time.monotonic() - sampler.t0, 1)}
                scans.append(row)
                now = [s for s in sampler.samples if s["t_s"] == sampler.samples[-1]["t_s"]] if sampler.samples else []
                rss = ", ".join(f"{s['role']} {s['rss_mb']:.0f}" for s in now)
                print(f"scan {row['scan']:4d} ({row['end_s'] / 60:5.1f}/{args.minutes:g} min): {events}/{ny * nx} events, "
                      f"{view.processed} processed, derived {'yes' if derived else 'NO'}, scan {ny * nx / scan_s:.1f} "
                      f"frames/s; RSS MB: {rss}", flush=True)
                kept.append((uid, derived))
                while len(kept) > args.keep:
                    old, old_derived = kept.pop(0)
                    try:
                        _forget(cat, processed_of(cat), old, old_derived, files.pop(old, []))
                    except Exception as exc:  # the soak goes on; the disk may then fill, which the figures show
                        print(f"could not delete run {old[:8]}: {type(exc).__name__}: {exc}", flush=True)

            while time.monotonic() < t_end:
                t0 = time.monotonic()
                (uid,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(ny, nx), overlap=0.7, optics=bl.optics,
                                        dark_uid=dark_uid))
                scan_s = time.monotonic() - t0
                session.flush(bridge, uid, 300)
                pending.append((uid, t0, scan_s))
                while len(pending) > 1:  # the pipeline works on the last scan while the next one runs
                    check(*pending.pop(0))
            while pending:
                check(*pending.pop(0))
            bridge.close()
    finally:
        writer.close()
        time.sleep(args.every)  # one sample after the last scan
        sampler.stop.set()
        sampler.join(10)
        close_catalogs()
    total_frames = ny * nx * len(scans)
    elapsed = scans[-1]["end_s"] - first_scan_at if scans else 0.0
    for row in scans:
        row["frames_per_s"] = round(ny * nx / row["scan_s"], 2)
    figures = growth(sampler.samples, warmup_s)
    result = {"minutes": args.minutes, "rate_hz": args.rate, "scan": args.scan, "scans": len(scans), "frames": total_frames,
              "events_lost": lost, "frames_per_s": round(total_frames / elapsed, 2) if elapsed else None,
              "scan_frames_per_s": round(total_frames / sum(s["scan_s"] for s in scans), 2) if scans else None,
              "scan_s_max": max((s["scan_s"] for s in scans), default=None),
              "warmup_s": warmup_s, "load_end": os.getloadavg(), "growth": figures, "per_scan": scans,
              "samples": sampler.samples}
    (root / "soak.json").write_text(json.dumps(result, indent=1))
    print(f"\n{len(scans)} scans, {total_frames} frames in {elapsed / 60:.1f} min: {result['frames_per_s']} frames/s "
          f"overall, {result['scan_frames_per_s']} during the scans; events lost {lost}; load {os.getloadavg()}")
    print("\n| process | RSS first → last (MB) | RSS max | RSS growth (MB/h) | fds first → last | fds growth (/h) |")
    print("|---|---|---|---|---|---|")
    for role, g in figures.items():
        print(f"| {role} | {g['rss_mb_first']:.0f} → {g['rss_mb_last']:.0f} | {g['rss_mb_max']:.0f} | "
              f"{g['rss_mb_per_hour']} | {g['fds_first']} → {g['fds_last']} | {g['fds_per_hour']} |")
    figure(root / "soak.png", sampler.samples, scans,
           f"soak: {len(scans)} scans of {args.scan} at {args.rate:g} Hz, {result['frames_per_s']} frames/s overall")
    print(f"rows in {root / 'soak.json'}, picture {root / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
