"""Kill or stop a part of the running system at a random moment of a scan and count what was lost. Prints a table.

    .venv/bin/python benchmarks/faults.py [--scans 24] [--scan 6x6] [--rate 10] [--seed N] [--out benchmark-faults]
                                          [--cases worker-kill worker-stop handler-kill handler-stop catalog-kill
                                           catalog-stop]

Each scan is ``ns-bluesky demo`` in a process of its own, its output read as it comes, on one catalog of the
benchmark's own whose embedded server this process runs (so checking a scan costs no server start; the catalog
cases kill or stop that server, and the demo starts one of its own to go on). Once the scan's plan runs, after a random delay within the scan's expected length (seeded: the
seed is printed, and a run with it repeats the same moments), one part gets SIGKILL, or SIGSTOP and SIGCONT
``--stopped`` seconds later: a frame worker, the pipeline's handler, or the embedded catalog server. The cases
take turns, so 24 scans give each of the six cases 4 times.

After each scan, from the catalog: were all the scan's events recorded with a stop document and every frame
readable through the catalog (the frames linked); is there a derived run, closed, with a QC row for every
frame. Where the handler was killed the demo ends at once naming ``ns-bluesky replay``, and the benchmark runs
that replay, as a user would, and checks its derived run the same way. From the command's output: the largest
silence (the longest time without a byte, from the scan's first output to the command's end), how long after
the fault its first line about it came, and the time to recover: until the pipeline's progress moved again (a
worker, a stopped handler), until the catalog said it was back, or until the replay's derived run was complete
(a killed handler). Writes ``faults.json`` (every scan) and ``faults.png``; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
NS_BLUESKY = str(Path(sys.executable).with_name("ns-bluesky"))
CASES = ["worker-kill", "worker-stop", "handler-kill", "handler-stop", "catalog-kill", "catalog-stop"]
TOLD = re.compile(rb"pipeline's handler|not answering|pipeline: waiting|worker .* (died|lost|gone)", re.I)
PIPELINE_BAR = re.compile(rb"pipeline:[^\r\n]*?(\d+)(?:/\d+)? *\[")  # tqdm: "pipeline: 45%|...| 16/36 [..."
BACK = re.compile(rb"catalog: (?:back|answering again) after")
SAID_BACK = re.compile(r"catalog: (?:back|answering again) after ([0-9.]+) s")


class Output(threading.Thread):
    """The command's output as it comes: every chunk with its arrival time, also written to a file."""

    def __init__(self, pipe, path: Path):
        super().__init__(daemon=True)
        self.pipe, self.path = pipe, path
        self.chunks: list[tuple[float, bytes]] = []

    def run(self) -> None:
        with open(self.path, "wb") as f:
            while True:
                data = os.read(self.pipe.fileno(), 65536)
                if not data:
                    return
                self.chunks.append((time.monotonic(), data))
                f.write(data)
                f.flush()

    def text(self) -> str:
        return b"".join(c for _, c in list(self.chunks)).decode(errors="replace")

    def first_after(self, t: float, pattern: re.Pattern) -> float | None:
        """When the first chunk after ``t`` matching ``pattern`` came (a line split over two chunks is missed)."""
        for at, data in list(self.chunks):
            if at >= t and pattern.search(data):
                return at
        return None

    def pipeline_moved_after(self, t: float) -> float | None:
        """When the pipeline's progress bar first showed more frames than it had at ``t``."""
        before = None
        for at, data in list(self.chunks):
            counts = [int(m) for m in PIPELINE_BAR.findall(data)]
            if not counts:
                continue
            if at < t:
                before = counts[-1]
            elif before is None or max(counts) > before:
                return at
        return None

    def around(self, at: float, chars: int = 120) -> tuple[str, str]:
        """The output just before ``at`` and just after it: what the command said before it fell silent, and
        what broke the silence."""
        before = b"".join(d for t, d in list(self.chunks) if t <= at)[-chars:]
        after = b"".join(d for t, d in list(self.chunks) if t > at)[:chars]
        return tuple(b.decode(errors="replace").replace("\r", "\n").strip() for b in (before, after))

    def largest_silence(self, since: float, until: float) -> tuple[float, float]:
        """(longest stretch without output between ``since`` and ``until``, when it began, s after ``since``)."""
        times = [since] + [at for at, _ in self.chunks if since <= at <= until] + [until]
        gaps = [(b - a, a - since) for a, b in zip(times, times[1:])]
        return max(gaps) if gaps else (0.0, 0.0)


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
    return sorted(found)


def _target_pid(part: str, out: Path, catalog: Path, rng: random.Random) -> int | None:
    pipeline = re.escape(str(out / "pipeline"))
    patterns = {
        "worker": rf"ns_bluesky\.stream\.worker .*--name frame .*{pipeline}|ns_bluesky\.stream\.worker .*{pipeline}.*--name frame",
        "handler": rf"ns_bluesky\.stream\.handler .*{pipeline}",
        "catalog": rf"ns_bluesky\.io\.catalog_server {re.escape(str(catalog))}",
    }
    pids = _pids(patterns[part])
    if not pids and part == "worker":
        pids = _pids(rf"ns_bluesky\.stream\.worker .*{pipeline}")
    return rng.choice(pids) if pids else None


def check_catalog(catalog: Path, expected: int, since: float) -> dict:
    """What the catalog holds of the scan that started after wall time ``since``: events, stop, frames
    readable, derived runs and their QC rows. The benchmark's own server of the shared catalog answers (one
    started again if the scan's fault killed it)."""
    from tiled.queries import Key

    from ns_bluesky.io.catalog import open_catalog
    from ns_bluesky.io.catalog_layout import derived_runs

    row: dict = {}
    try:
        cat = open_catalog(catalog)
        raws = [uid for uid, run in cat.search(Key("plan_name") == "ptycho_scan").items()
                if run.metadata["start"]["time"] >= since]
        if not raws:
            raise LookupError("no scan of this round in the catalog")
        raw = cat[raws[-1]]
        stop = raw.metadata.get("stop") or {}
        row["raw_uid"] = raws[-1]
        row["events"] = int((stop.get("num_events") or {}).get("primary", 0))
        row["events_expected"] = expected
        row["raw_exit_status"] = stop.get("exit_status", "no stop document")
        row["frames_readable"] = int(len(raw["primary"]["fccd_image"].read())) if row["events"] else 0
        derived = derived_runs(cat, raws[-1])
        row["derived_runs"] = len(derived)
        if derived:
            last = derived[-1]
            dstop = last.metadata.get("stop") or {}
            row["derived_exit_status"] = dstop.get("exit_status", "no stop document")
            row["derived_frames"] = int((dstop.get("num_events") or {}).get("frames_qc", 0))
    except Exception as exc:  # the figure is what was lost: report it
        row["catalog_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def lost(row: dict) -> int:
    """Events, frames and derived QC rows missing from the catalog at the end (after a replay, if one ran)."""
    if "catalog_error" in row:
        return row.get("events_expected", 0) or 1
    n = row["events_expected"]
    return (n - row["events"]) + (row["events"] - row["frames_readable"]) + (n - row.get("derived_frames", 0))


def one_scan(i: int, case: str, args, root: Path, rng: random.Random) -> dict:
    part, how = case.split("-")
    work = root / f"scan-{i:02d}-{case}"
    catalog, out, log = root / "catalog", work / "out", work / "demo.log"
    since = time.time()
    work.mkdir(parents=True)
    ny, nx = (int(v) for v in args.scan.split("x"))
    expected_s = ny * nx / args.rate
    delay = rng.uniform(0.1, 0.9) * expected_s
    t0 = time.monotonic()
    proc = subprocess.Popen([NS_BLUESKY, "demo", "--scan", args.scan, "--rate", str(args.rate), "--darks", "2",
                             "--workers", "2", "--refine", str(args.refine), "--catalog", str(catalog), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "NS_BLUESKY_LOG": str(log), "COLUMNS": "100"})
    output = Output(proc.stdout, work / "demo.out")
    output.start()
    row: dict = {"scan": i, "case": case, "delay_s": round(delay, 2), "faulted": False}
    scan_began = None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and "Executing plan <generator object ptycho_scan" in log.read_text(errors="replace"):
                scan_began = time.monotonic()
                break
            time.sleep(0.1)
        time.sleep(delay)
        pid = _target_pid(part, out, catalog, rng)
        if pid is not None and proc.poll() is None:
            os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            fault = time.monotonic()
            row.update(faulted=True, at_s=round(fault - t0, 2))
            if how == "stop":
                time.sleep(args.stopped)
                os.kill(pid, signal.SIGCONT)
            resumed = time.monotonic()
            told = output.first_after(fault, TOLD)
            while told is None and proc.poll() is None and time.monotonic() - fault < 30:
                time.sleep(0.05)
                told = output.first_after(fault, TOLD)
            row["told_after_s"] = None if told is None else round(told - fault, 2)
        proc.wait(max(10.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        row["timed_out"] = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        output.join(10)
    end = time.monotonic()
    row.update(exit_code=proc.returncode, demo_s=round(end - t0, 1))
    if output.chunks:
        since = scan_began or output.chunks[0][0]
        gap, at = output.largest_silence(since, end)
        row.update(largest_silence_s=round(gap, 2), silence_at_s=round(at, 1))
        row["silence_between"] = output.around(since + at + 1e-6)
        gap0, _ = output.largest_silence(output.chunks[0][0], end)
        row["largest_silence_from_first_output_s"] = round(gap0, 2)
    row.update(check_catalog(catalog, ny * nx, since))
    if row["faulted"]:
        if case == "catalog-kill" or case == "catalog-stop":
            back = output.first_after(fault, BACK)
            row["recovered_after_s"] = None if back is None else round(back - (resumed if how == "stop" else fault), 2)
        elif case == "handler-kill":
            r0 = time.monotonic()
            done = subprocess.run([NS_BLUESKY, "replay", row.get("raw_uid", "-1")[:8], "--catalog", str(catalog),
                                   "--out", str(work / "replay"), "--quiet"], capture_output=True, text=True,
                                  timeout=600, env={**os.environ, "NS_BLUESKY_LOG": str(work / "replay.log")})
            row["replay_exit_code"] = done.returncode
            row.update({k: v for k, v in check_catalog(catalog, ny * nx, since).items() if k.startswith("derived")})
            row["recovered_after_s"] = round(time.monotonic() - r0, 2)  # the replay, until its derived run is in
        else:
            moved = output.pipeline_moved_after(resumed)
            row["recovered_after_s"] = None if moved is None else round(moved - resumed, 2)
    row["lost"] = lost(row)
    if not args.keep_data:  # 24 scans of frames would fill a small disk: the figures are in the row
        for bulky in ("out", "replay"):
            shutil.rmtree(work / bulky, ignore_errors=True)
    return row


def summary(rows: list[dict]) -> list[str]:
    by = defaultdict(list)
    for r in rows:
        by[r["case"]].append(r)
    lines = ["| case | scans (faulted) | lost (events, frames, derived QC rows) | raw runs closed | derived runs closed | "
             "user told after (s) | time to recover (s) | largest silence (s) | exit codes |",
             "|---|---|---|---|---|---|---|---|---|"]

    def span(values):
        values = [v for v in values if v is not None]
        return f"{min(values):.2f}-{max(values):.2f}" if values else "-"

    for case in CASES:
        rs = by.get(case)
        if not rs:
            continue
        expected = sum(r.get("events_expected", 0) for r in rs)
        lines.append(
            f"| {case} | {len(rs)} ({sum(r['faulted'] for r in rs)}) | {sum(r['lost'] for r in rs)} of {3 * expected} | "
            f"{sum(r.get('raw_exit_status') == 'success' for r in rs)}/{len(rs)} `success` | "
            f"{sum(r.get('derived_exit_status') == 'success' for r in rs)}/{len(rs)} | {span(r.get('told_after_s') for r in rs)} | "
            f"{span(r.get('recovered_after_s') for r in rs)} | {span(r.get('largest_silence_s') for r in rs)} | "
            f"{sorted({r['exit_code'] for r in rs})} |")
    return lines


def figure(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    for k, case in enumerate(cases):
        rs = [r for r in rows if r["case"] == case]
        ax[0].bar(k, sum(r["lost"] for r in rs), color="tab:red")
        for key, a in (("recovered_after_s", ax[1]), ("largest_silence_s", ax[2])):
            values = [r.get(key) for r in rs if r.get(key) is not None]
            a.plot([k] * len(values), values, "o", alpha=0.7)
    ax[0].set_ylabel("events + frames + derived rows lost")
    ax[0].set_ylim(0, max(1, max(r["lost"] for r in rows)) * 1.1)
    ax[1].set_ylabel("time to recover (s)")
    ax[2].set_ylabel("largest silence of the command (s)")
    ax[2].axhline(2.0, color="gray", ls="--", lw=1)
    for a in ax:
        a.set_xticks(range(len(cases)), cases, rotation=30)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=24)
    ap.add_argument("--scan", default="4x4")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--stopped", type=float, default=5.0, help="seconds between SIGSTOP and SIGCONT")
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    ap.add_argument("--refine", type=float, default=0.0, help="the demo's --refine (s)")
    ap.add_argument("--report", default=None, metavar="JSON", help="print the table and draw the picture of a "
                    "faults.json from an earlier run (one cut short too), and run nothing")
    ap.add_argument("--out", default="benchmark-faults")
    ap.add_argument("--keep-data", action="store_true", help="keep each scan's catalog and outputs (default: "
                    "deleted once checked; the command's output and log stay)")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        rows = saved["rows"]
        for r in rows:  # a catalog case whose recovery line the run missed: the command's own figure for it
            out = Path(args.report).parent / f"scan-{r['scan']:02d}-{r['case']}" / "demo.out"
            if r["case"].startswith("catalog") and r.get("recovered_after_s") is None and out.exists():
                said = SAID_BACK.findall(out.read_text(errors="replace"))
                if said:
                    r["recovered_after_s"] = max(float(v) for v in said)
        print(f"{len(rows)} scans, seed {saved['seed']}\n" + "\n".join(summary(rows)))
        figure(rows, Path(args.report).with_suffix(".png"), f"{len(rows)} scans, one part killed or stopped at a "
                                                             f"random moment each (seed {saved['seed']})")
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"benchmarks/faults.py --seed {seed}: {args.scans} scans of {args.scan} at {args.rate:g} Hz, cases "
          f"{', '.join(args.cases)}; load {os.getloadavg()}", flush=True)
    from ns_bluesky.io.catalog import close_catalogs, open_catalog

    open_catalog(root / "catalog")  # one catalog for every scan, its server this process's (and the catalog cases' target)
    rows = []
    t_start = time.monotonic()
    for i in range(args.scans):
        case = args.cases[i % len(args.cases)]
        row = one_scan(i, case, args, root, rng)
        rows.append(row)
        (root / "faults.json").write_text(json.dumps({"seed": seed, "args": vars(args), "rows": rows}, indent=2))
        print(f"[{i + 1}/{args.scans}, {(time.monotonic() - t_start) / 60:.1f} min] {case}: lost {row['lost']}, "
              f"raw {row.get('raw_exit_status')}, derived {row.get('derived_exit_status', 'none')}, told after "
              f"{row.get('told_after_s')} s, recovered after {row.get('recovered_after_s')} s, largest silence "
              f"{row.get('largest_silence_s')} s, exit {row['exit_code']}, load {os.getloadavg()[0]:.1f}", flush=True)
    close_catalogs()
    lines = summary(rows)
    print("\n" + "\n".join(lines))
    print(f"seed {seed}; load at the end {os.getloadavg()}; rows in {root / 'faults.json'}")
    try:
        figure(rows, root / "faults.png", f"{len(rows)} scans, one part killed or stopped at a random moment each "
                                          f"(seed {seed})")
    except Exception as exc:  # the table is the result; the picture is a convenience
        print(f"no picture: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
