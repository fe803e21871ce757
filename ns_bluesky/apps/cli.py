"""Command line: ``ns-bluesky <subcommand>`` and ``nsraw2cxi``.

Every subcommand has ``--help``; a user error prints one line starting with the
program name and exits 1 (argparse's usage errors exit 2). Set ``NS_BLUESKY_DEBUG=1``
to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime

from ..errors import NSBlueskyError, ParameterError
from .guard import guarded as _guarded
from .options import OneLineParser, count, input_file, number, output_dir, output_file, scan_shape

#: the engines' names for --help (importing the engines to list them would slow every command)
ENGINES = ("lsqml", "raar", "dm", "epie", "rpie")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.adaptive:
        return _cmd_demo_adaptive(args)
    result = run_demo(
        scan=args.scan or (40, 40),
        rate_hz=args.rate,
        darks=args.darks,
        pattern=args.pattern,
        out=args.out,
        catalog=args.catalog,
        sample_image=args.sample_image,
        sample_name=args.sample_name,
        exposure_s=args.exposure,
        seed=args.seed,
        workers=args.workers,
        engine=args.engine,
        backend=args.backend,
        summary_json=args.summary_json,
        refine_s=args.refine,
        progress=not args.quiet,
        epics=args.epics,
    )
    where = f", IOC {result.ioc['prefix']} on 127.0.0.1:{result.ioc['port']}" if result.ioc else ""
    print(
        f"scan {result.scan_id}: {result.frames} frames in {result.acquisition_s:.1f} s, exit status {result.exit_status}"
        f" ({result.path} path{where})\n"
        f"  raw run      {result.raw_uid}\n"
        f"  dark run     {result.dark_uid}\n"
        f"  derived run  {result.derived_uid}\n"
        f"  catalog      {result.catalog}\n"
        f"  CXI          {result.cxi}\n"
        f"  picture      {result.png}\n"
        f"  summary      {args.summary_json or os.path.join(os.path.dirname(result.png), 'summary.json')}"
    )
    return 0


def _cmd_demo_adaptive(args: argparse.Namespace) -> int:
    from .demo_adaptive import run_adaptive_demo

    if args.epics:
        raise NSBlueskyError("--adaptive runs on the in-process beamline; drop --epics")
    result = run_adaptive_demo(
        scan=args.scan or (20, 20), rate_hz=args.rate, darks=args.darks, pattern=args.pattern, out=args.out,
        catalog=args.catalog,
        sample_image=args.sample_image, sample_name=args.sample_name, exposure_s=args.exposure, seed=args.seed,
        workers=args.workers, engine=args.engine, backend=args.backend, summary_json=args.summary_json,
        refine_s=args.refine, progress=not args.quiet,
    )
    print(
        f"scan {result.scan_id}: adaptive_ptycho, {result.frames} frames for {result.grid_points} points, "
        f"exit status {result.exit_status}\n"
        f"  raw run      {result.raw_uid}\n"
        f"  dark run     {result.dark_uid}\n"
        f"  derived run  {result.derived_uid}\n"
        f"  catalog      {result.catalog}\n"
        f"  picture      {result.png}\n"
        f"  summary      {args.summary_json or os.path.join(os.path.dirname(result.png), 'summary.json')}"
    )
    return 0


def _run_row(uid: str, md, kind: str) -> dict:
    start, stop = md["start"], md.get("stop") or {}
    derived = kind == "derived"
    return {
        "kind": kind,
        "scan_id": start.get("parent_scan_id" if derived else "scan_id"),  # a derived run: its raw run's scan
        "uid": uid,
        "time": datetime.fromtimestamp(start["time"]).isoformat(sep=" ", timespec="seconds"),
        "plan": start.get("plan_name", ""),
        "sample": start.get("parent_sample_name" if derived else "sample_name", ""),
        "points": start.get("num_points", ""),
        "status": stop.get("exit_status", "running"),
        **({"parent_uid": start.get("parent_uid")} if derived else {}),
        "_t": start["time"],
    }


def _cmd_runs(args: argparse.Namespace) -> int:
    from ..io.catalog import open_catalog, search_runs
    from ..io.catalog_layout import processed_of

    if args.limit < 1:
        raise NSBlueskyError(f"--limit must be >= 1, got {args.limit}")
    cat = open_catalog(args.catalog, create=False)
    query = dict(scan_id=args.scan_id, uid=args.uid, sample=args.sample, plan_name=args.plan, since=args.since,
                 until=args.until, text=args.text)
    rows = []
    for kind in ("raw", "derived"):
        if args.kind in ("all", kind):
            results = search_runs(cat if kind == "raw" else processed_of(cat), derived=kind == "derived", **query)
            newest = results.items()[-1 : -args.limit - 1 : -1]  # tiled slices from the end only backwards
            rows += [_run_row(uid, run.metadata, kind) for uid, run in newest]
    rows.sort(key=lambda r: r["_t"])  # both kinds, newest last
    rows = [{k: v for k, v in r.items() if k != "_t"} for r in rows[-args.limit:]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs match")
        return 0
    header = ("kind", "scan_id", "uid", "time", "plan", "sample", "points", "status")
    table = [header] + [tuple(str(r[k])[:8] if k == "uid" else str(r[k]) for k in header) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..stream.mpi import mpi_size_from_env
    from .reconstruct import run

    src = args.cxi
    out = args.out or os.path.splitext(src)[0] + "_recon.cxi"
    png = args.png or os.path.splitext(out)[0] + ".png"
    if args.probe_start is not None and args.engine != "lsqml":
        raise ParameterError(f"--probe-start is an lsqml option; --engine {args.engine} starts from the file's probe")
    kwargs = dict(engine_name=args.engine, iterations=args.iterations, seconds=args.seconds, size=args.size, png=png,
                  progress=not args.quiet, backend=args.backend, positions=args.positions, probe_start=args.probe_start)
    if mpi_size_from_env() > 1:  # one of the ranks of `mpiexec -n N ns-bluesky reconstruct`
        return _reconstruct_rank(src, out, kwargs, args.engine)
    with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's two
        warnings.simplefilter("always", UserWarning)
        result = run(src, out, **kwargs)
    for w in caught:
        print(f"ns-bluesky: warning: {w.message}", file=sys.stderr)
    print(
        f"{args.engine}: {len(result.residuals)} iterations in {result.seconds:.1f} s (stopped by {result.stopped_by}), "
        f"residual {result.residuals[0]:.4f} -> best {result.best_residual:.4f} at iteration {result.best_iteration}; "
        f"positions read as: {result.orientation.name}; "
        f"object {result.obj.shape} at {result.pixel_size_m * 1e9:.2f} nm\n  wrote {result.out}\n  picture {result.png}"
    )
    return 0


def _reconstruct_rank(src: str, out: str, kwargs: dict, engine_name: str) -> int:
    """This rank's share of a split reconstruction. An error on any rank ends the whole job (MPI_Abort, one
    line naming the rank): the others would otherwise wait in their next reduction for ever."""
    from ..ptycho.backend import set_fft_threads
    from ..stream.mpi import MPIComm, cores_per_rank
    from .reconstruct import run

    comm = MPIComm()
    set_fft_threads(cores_per_rank())  # the ranks on a host share its cores
    try:
        result = run(src, out, comm=comm, threads=cores_per_rank(), **kwargs)
    except BaseException as exc:  # noqa: BLE001  (every kind: a rank that leaves alone hangs the job)
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(f"ns-bluesky: error: rank {comm.rank} of {comm.size}: {first}", file=sys.stderr, flush=True)
        comm.abort(1)
        raise
    if comm.rank == 0:
        print(
            f"{engine_name} on {comm.size} ranks: {len(result.residuals)} iterations in {result.seconds:.1f} s (stopped by "
            f"{result.stopped_by}), residual {result.residuals[0]:.4f} -> best {result.best_residual:.4f} at iteration "
            f"{result.best_iteration}; positions read as: {result.orientation.name}; object {result.obj.shape} at "
            f"{result.pixel_size_m * 1e9:.2f} nm (communication {comm.seconds:.2f} s on rank 0)\n  wrote {result.out}\n"
            f"  picture {result.png}"
        )
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay

    result = replay(args.run, catalog=args.catalog, out=args.out, workers=args.workers, engine=args.engine,
                    backend=args.backend, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def _ipython_dir(given: str | None):
    from pathlib import Path

    if given:
        return Path(given).expanduser()
    try:
        from IPython.paths import get_ipython_dir
    except ImportError:
        raise NSBlueskyError("the beamline shell needs IPython: pip install 'ns-bluesky[shell]'") from None
    return Path(get_ipython_dir())


def _install_profile(ipython_dir) -> str:
    import shutil
    from importlib.resources import files
    from pathlib import Path

    PROFILE_DIR = Path(str(files("ns_bluesky.profiles"))) / "profile_nanosurveyor"  # data, not code: found, not imported

    target = ipython_dir / "profile_nanosurveyor"
    (target / "startup").mkdir(parents=True, exist_ok=True)
    for f in [PROFILE_DIR / "README.md", *sorted((PROFILE_DIR / "startup").glob("*.py"))]:
        shutil.copy2(f, target / f.relative_to(PROFILE_DIR))
    return str(target)


def _profile_startup(ipython_dir: str | None):
    """The installed profile's startup directory (for the queue server's worker), installed first when missing."""
    ipython_dir = _ipython_dir(ipython_dir)
    if not (ipython_dir / "profile_nanosurveyor" / "startup" / "00-base.py").exists():
        print(f"installing the beamline profile: {_install_profile(ipython_dir)}")
    return ipython_dir / "profile_nanosurveyor" / "startup"


def _cmd_profile(args: argparse.Namespace) -> int:
    print(f"profile installed: {_install_profile(_ipython_dir(args.ipython_dir))}")
    return 0


def _cmd_shell(args: argparse.Namespace) -> int:
    ipython_dir = _ipython_dir(args.ipython_dir)
    if not (ipython_dir / "profile_nanosurveyor" / "startup" / "00-base.py").exists():
        _install_profile(ipython_dir)
    os.execv(sys.executable, [sys.executable, "-m", "IPython", f"--ipython-dir={ipython_dir}", "--profile=nanosurveyor"])
    return 0


def _cmd_gui(args: argparse.Namespace) -> int:
    from ..pydm_screens.app import run_gui

    display_args = list(args.args)
    if args.catalog:
        display_args += ["--catalog", args.catalog]
    return run_gui(args.screen, display_args, config=args.config, screenshot=args.screenshot, after_s=args.after)


def _catalog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        metavar="DIR|URI",
        help="catalog directory (embedded server) or http URI of a tiled server such as 'ns-bluesky catalog serve', "
        "its api key from $NS_BLUESKY_API_KEY or the 0600 file $NS_BLUESKY_API_KEY_FILE names "
        "(default: $NS_BLUESKY_CATALOG or the user data directory)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ns-bluesky", description="Streaming X-ray ptychography on Bluesky (Nanosurveyor rebuilt)."
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"ns-bluesky {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulated ptychography scan end to end (darks, scan, catalog, CXI)",
        description="Take dark frames and a ptychographic scan on the simulated beamline with a real "
        "RunEngine, store both runs in the catalog, export the scan as CXI and a quick-look PNG.",
    )
    demo.add_argument("--scan", type=scan_shape, help="raster points, rows x columns (default 40x40; 20x20 with --adaptive)")
    demo.add_argument("--rate", type=number(0, 1000, what=" frames/s"), default=10.0, help="frames per second; 0 = as fast as possible (default 10)")
    demo.add_argument("--darks", type=count(2, 10_000), default=20, help="dark frames before the scan (default 20)")
    demo.add_argument("--pattern", choices=("raster", "fermat"), default="raster",
                      help="scan pattern (default raster); fermat: a Fermat spiral of rows x columns points, also with --adaptive")
    demo.add_argument("--sample-image", metavar="PNG|TIFF", type=input_file, help="grey-scale image for the sample (default: test pattern)")
    demo.add_argument("--sample-name", help="sample name for the metadata (default: the image's file name)")
    demo.add_argument("--exposure", type=number(0, 60, above=True, what=" s"), help="seconds per frame (default 0.1, or 1/rate when that is shorter)")
    demo.add_argument("--seed", type=count(0, 2**32 - 1), default=0, help="simulation seed (default 0)")
    demo.add_argument("--out", default="demo-output", type=output_dir, help="folder for CXI, PNG and summary (default ./demo-output)")
    demo.add_argument("--workers", type=count(1, 64), default=2, help="frame workers (default 2)")
    demo.add_argument("--engine", choices=ENGINES, default="lsqml", help="live reconstruction engine (default lsqml)")
    demo.add_argument("--backend", choices=("numpy", "cupy"), default="numpy", help="array backend of the reconstruction")
    demo.add_argument("--refine", type=number(0, 86_400, what=" s"), default=60.0, metavar="S",
                      help="seconds the reconstruction refines after its final image (default 60; 0: none)")
    demo.add_argument("--summary-json", metavar="F", type=output_file, help="summary file (default OUT/summary.json)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--adaptive", action="store_true",
                      help="run adaptive_ptycho instead, on the sample with its right half empty and with injected "
                      "faults (a dropped packet, saturation, beam loss, the sample slipping); the PNG and summary "
                      "show what it decided: the region chosen, frames saved, taken again, drift corrected")
    demo.add_argument("--epics", action="store_true",
                      help="run through EPICS Channel Access: the demo starts the simulated IOC on a free loopback "
                      "port, drives it with the EPICS devices and stops it at the end")
    _catalog_arg(demo)
    demo.set_defaults(func=_cmd_demo)

    runs = sub.add_parser("runs", help="list raw and derived runs in the catalog",
                          description="List runs, newest last, as a table: the raw runs (scans, darks) and the pipeline's "
                          "derived runs, marked in the kind column (a derived run shows its raw run's scan id and sample).")
    _catalog_arg(runs)
    runs.add_argument("--sample", help="sample name")
    runs.add_argument("--since", help="start time, ISO 8601 (2026-11-25 or 2026-11-25T14:00)")
    runs.add_argument("--until", help="end time, ISO 8601")
    runs.add_argument("--plan", help="plan name (ptycho_scan, dark_frames...)")
    runs.add_argument("--scan-id", type=count(0), help="scan id")
    runs.add_argument("--uid", help="uid or uid prefix")
    runs.add_argument("--text", help="full-text search over the metadata")
    runs.add_argument("--kind", choices=("all", "raw", "derived"), default="all", help="which runs (default all)")
    runs.add_argument("--limit", type=count(1), default=50, help="show at most this many (default 50)")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(func=_cmd_runs)

    rec = sub.add_parser(
        "reconstruct",
        help="reconstruct a ptychography CXI file",
        description="Reconstruct object and probe from a CXI file (frames DC-centred, translations in metres); "
        "writes image_1 (probe) and image_2 (object) with the residual per iteration, and a PNG. Under "
        "`mpiexec -n N` (the mpi extra) the frames are split over the N ranks by position; rank 0 writes.",
    )
    rec.add_argument("cxi", type=input_file, help="input CXI file")
    rec.add_argument("--engine", default="lsqml", choices=ENGINES, help="default lsqml")
    rec.add_argument("--iterations", type=count(1, 1_000_000), help="at most this many iterations (default 100 without --seconds)")
    rec.add_argument("--seconds", type=number(0, 1e7, above=True, what=" s"), metavar="S",
                     help="iterate until S seconds are spent (and --iterations, if given); the best state seen is kept")
    rec.add_argument("--positions", default="auto", choices=("auto", "probe", "sample"),
                     help="what the file's translations are: the probe's position on the sample (as ns-bluesky and "
                     "ptychodus write them), the sample's translation, or auto (default): decided from the data among "
                     "both and their x/y flips and swaps, with the margin printed")
    rec.add_argument("--probe-start", choices=("auto", "given", "far_field", "search"), default=None,
                     help="lsqml: how the file's probe starts (default auto: the defocus that short trials fit best is "
                     "added to it, and where its far field is the wrong size for the data that of the data is taken "
                     "first; search: the data's far field whatever the size, its defocus searched with the probe held, "
                     "which misjudged measured data; far_field: the data's far field only; given: as in the file)")
    rec.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    rec.add_argument("--size", type=count(8, 16384), help="FFT-downsample frames to this side first (e.g. 256)")
    rec.add_argument("--out", type=output_file, help="output CXI (default: IN_recon.cxi)")
    rec.add_argument("--png", type=output_file, help="picture of the result (default: OUT with .png)")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=_cmd_reconstruct)

    rep = sub.add_parser(
        "replay",
        help="stream a stored scan through the pipeline again",
        description="Re-stream a raw ptychography run (and its dark run) from the catalog through a private pipeline; "
        "the results are stored as a new derived run linked to it (reprocessing from history).",
    )
    rep.add_argument("run", help="raw run: uid, uid prefix or scan id")
    rep.add_argument("--out", default="replay-output", type=output_dir, help="folder for the CXI and the pipeline's logs")
    rep.add_argument("--workers", type=count(1, 64), default=2, help="frame workers (default 2)")
    rep.add_argument("--engine", choices=ENGINES, default="lsqml")
    rep.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    rep.add_argument("--quiet", action="store_true")
    _catalog_arg(rep)
    rep.set_defaults(func=_cmd_replay)

    prof = sub.add_parser("profile", help="install the beamline IPython profile",
                          description="Copy profile_nanosurveyor (RunEngine, catalog, devices, pipeline, plans) into IPython's directory.")
    prof.add_argument("action", choices=("install",))
    prof.add_argument("--ipython-dir", help="IPython's directory (default: IPython's own, ~/.ipython)")
    prof.set_defaults(func=_cmd_profile)
    shell = sub.add_parser("shell", help="IPython with the beamline profile",
                           description="Open IPython with profile_nanosurveyor (installing it first if needed).")
    shell.add_argument("--ipython-dir", help="IPython's directory (default: IPython's own, ~/.ipython)")
    shell.set_defaults(func=_cmd_shell)

    gui = sub.add_parser(
        "gui", help="the PyDM screens: live results, pipeline status and control, viewer",
        description="Open a PyDM screen. live: the reconstruction, STXM, probe, frames, error curve and log as they come; "
        "status: modules, workers, queues, rates, errors, with start/stop/abort/reset/scale; viewer: a CXI file or a catalog run.",
    )
    gui.add_argument("screen", choices=("live", "status", "viewer"), nargs="?", default="live")
    gui.add_argument("args", nargs="*", help="for the viewer: a CXI file, or a run (scan id or uid) of --catalog")
    gui.add_argument("--config", help="the pipeline to watch (default: $NS_BLUESKY_PIPELINE, else the default ports)")
    gui.add_argument("--screenshot", metavar="PNG", type=output_file, help="save the window as PNG after --after seconds, then quit")
    gui.add_argument("--after", type=number(0, 3600), default=10.0, help="seconds before the screenshot (default 10)")
    _catalog_arg(gui)
    gui.set_defaults(func=_cmd_gui)

    from .catalog_cli import add_parser as add_catalog_parser
    from .ioc import add_parser as add_ioc_parser
    from .pipeline_cli import add_parsers
    from .queue_cli import add_parser as add_queue_parser

    add_catalog_parser(sub)
    add_ioc_parser(sub)
    add_parsers(sub, _catalog_arg)
    add_queue_parser(sub, _catalog_arg, _profile_startup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command itself, not a call from Python: its waits count from its last printed byte
        from ..io.terminal import watch

        watch()
    args = build_parser().parse_args(argv)
    return _guarded("ns-bluesky", args.func, args)


def _cmd_raw2cxi(args: argparse.Namespace) -> int:
    from ..io.catalog import open_catalog
    from ..io.export import export_run

    out = args.output or f"{args.run}.cxi"
    path = export_run(open_catalog(args.catalog, create=False), args.run, out, raw=args.raw, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def build_raw2cxi_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="nsraw2cxi",
        description="Turn a raw ptycho run from the catalog into a CXI file: assembled frames, darks, positions.",
    )
    p.add_argument("run", help="scan_id, uid or uid prefix")
    p.add_argument("-o", "--output", type=output_file, help="CXI file to write (default RUN.cxi)")
    p.add_argument("--raw", action="store_true", help="keep frames in raw FCCD readout order (1040 x 1152)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _catalog_arg(p)
    p.set_defaults(func=_cmd_raw2cxi)
    return p


def nsraw2cxi_main(argv: Sequence[str] | None = None) -> int:
    args = build_raw2cxi_parser().parse_args(argv)
    return _guarded("nsraw2cxi", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
