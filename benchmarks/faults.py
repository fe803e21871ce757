"""Kill a part of the running system at a random moment of a scan and count what was lost. Prints a table.

    .venv/bin/python benchmarks/faults.py [--scans 20] [--scan 6x6] [--rate 10] [--targets worker handler catalog]
                                          [--seed 0] [--out benchmark-faults]

Each scan is ``ns-bluesky demo`` in a process of its own, on a catalog of the benchmark's own. Once the scan's
plan runs, after a random delay within the scan's expected length, one target gets SIGKILL (or SIGSTOP for
``stopped-worker``, continued 5 s later): a frame worker, the pipeline's handler, or the embedded catalog
server. Then, from the catalog afterwards: were all the scan's events and frames recorded, did the raw run
end with a stop document, was there a derived run; and from the command: its exit status, how long after the
kill its first line about it came, and how long the whole demo took. Writes ``faults.json`` (every scan) and
``faults.png`` (events kept per case); passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))
TOLD = re.compile(r"pipeline's handler|not answering|worker .* (died|lost|gone)", re.I)


def _pids(pattern: str) -> list[int]:
    found = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                cmd = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(pattern, cmd):
                found.append(int(proc_dir.name))
    return found


def _target_pid(target: str, out: Path, catalog: Path) -> int | None:
    pipeline = re.escape(str(out / "pipeline"))
    patterns = {
        "worker": rf"ns_bluesky\.stream\.worker .*{pipeline}",
        "stopped-worker": rf"ns_bluesky\.stream\.worker .*{pipeline}",
        "handler": rf"ns_bluesky\.stream\.handler .*{pipeline}",
        "catalog": rf"ns_bluesky\.io\.catalog_server {re.escape(str(catalog))}",
    }
    pids = _pids(patterns[target])
    return random.choice(pids) if pids else None


def one_scan(i: int, target: str, args, root: Path) -> dict:
    from ns_bluesky.io.catalog import close_catalogs, open_catalog

    work = root / f"scan-{i:02d}-{target}"
    catalog, out, log = work / "catalog", work / "out", work / "demo.log"
    work.mkdir(parents=True)
    said = work / "demo.out"
    ny, nx = (int(v) for v in args.scan.split("x"))
    expected_s = ny * nx / args.rate
    t0 = time.monotonic()
    with open(said, "w") as stdout:
        proc = subprocess.Popen([NS_BLUESKY, "demo", "--scan", args.scan, "--rate", str(args.rate), "--darks", "2",
                                 "--workers", "2", "--refine", "1", "--quiet", "--catalog", str(catalog),
                                 "--out", str(out)], stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "NS_BLUESKY_LOG": str(log)})
    row = {"scan": i, "target": target, "killed": False}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and "Executing plan <generator object ptycho_scan" in log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        time.sleep(random.uniform(0.1, 0.8) * expected_s)
        pid = _target_pid(target, out, catalog)
        if pid is not None and proc.poll() is None:
            os.kill(pid, signal.SIGSTOP if target == "stopped-worker" else signal.SIGKILL)
            killed_at = time.monotonic()
            row.update(killed=True, at_s=round(killed_at - t0, 2))
            if target == "stopped-worker":
                time.sleep(5)
                os.kill(pid, signal.SIGCONT)
            told = None
            while proc.poll() is None and told is None and time.monotonic() - killed_at < 60:
                if TOLD.search(said.read_text(errors="replace")):
                    told = time.monotonic() - killed_at
                time.sleep(0.05)
            row["told_after_s"] = None if told is None else round(told, 2)
        proc.wait(max(10.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        row["timed_out"] = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    row.update(exit_code=proc.returncode, demo_s=round(time.monotonic() - t0, 1))
    try:
        cat = open_catalog(catalog, create=False)
        raws = [uid for uid in cat if cat[uid].metadata["start"].get("plan_name") == "ptycho_scan"]
        raw = cat[raws[-1]]
        stop = raw.metadata.get("stop") or {}
        row["events"] = int((stop.get("num_events") or {}).get("primary", 0))
        row["events_expected"] = ny * nx
        row["raw_exit_status"] = stop.get("exit_status", "no stop document")
        row["frames_readable"] = int(len(raw["primary"]["fccd_image"].read())) if row["events"] else 0
        derived = [uid for uid in cat if cat[uid].metadata["start"].get("parent_uid") == raws[-1]]
        row["derived"] = bool(derived)
        if derived:
            row["derived_exit_status"] = (cat[derived[-1]].metadata.get("stop") or {}).get("exit_status")
    except Exception as exc:  # the figure is what was lost: report it
        row["catalog_error"] = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        close_catalogs()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--scan", default="6x6")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--targets", nargs="+", default=["worker", "stopped-worker", "handler", "catalog"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmark-faults")
    args = ap.parse_args()
    random.seed(args.seed)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"benchmarks/faults.py: {args.scans} scans of {args.scan} at {args.rate:g} Hz, load {os.getloadavg()}",
          flush=True)
    rows = []
    for i in range(args.scans):
        target = args.targets[i % len(args.targets)]
        row = one_scan(i, target, args, root)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (root / "faults.json").write_text(json.dumps(rows, indent=2))
    by = defaultdict(list)
    for r in rows:
        by[r["target"]].append(r)
    print("\n| case | scans | events kept | raw run closed | derived run | told after (s) | exit codes | demo s |")
    print("|---|---|---|---|---|---|---|---|")
    for target, rs in by.items():
        kept = sum(r.get("events", 0) for r in rs), sum(r.get("events_expected", 0) for r in rs)
        closed = sum(r.get("raw_exit_status") == "success" for r in rs)
        derived = sum(bool(r.get("derived")) for r in rs)
        told = [r["told_after_s"] for r in rs if r.get("told_after_s") is not None]
        codes = sorted({r["exit_code"] for r in rs})
        print(f"| {target} | {len(rs)} | {kept[0]}/{kept[1]} | {closed}/{len(rs)} 'success' | {derived}/{len(rs)} | "
              f"{min(told) if told else '-'}-{max(told) if told else '-'} | {codes} | "
              f"{min(r['demo_s'] for r in rs)}-{max(r['demo_s'] for r in rs)} |")
    print(f"load at the end {os.getloadavg()}; rows in {root / 'faults.json'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
        names = list(by)
        ax.bar(names, [sum(r.get("events", 0) for r in by[n]) / max(1, sum(r.get("events_expected", 0) for r in by[n]))
                       for n in names])
        ax.set_ylabel("events kept / expected")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{len(rows)} scans, one part killed at a random moment each")
        fig.savefig(root / "faults.png", dpi=90)
    except Exception as exc:  # the table is the result; the picture is a convenience
        print(f"no picture: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
