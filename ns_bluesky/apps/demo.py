"""The main job: a simulated streaming-ptychography scan end to end on the embedded defaults.

Nanosurveyor's loop on Bluesky: the embedded catalog and the pipeline (local worker
processes) start; a real RunEngine takes darks and runs the scan over the simulated
beamline's Ophyd devices; the bridge streams every frame to the pipeline while the
raw runs go to the catalog; the pipeline cleans the frames and grows the STXM and
the reconstruction live; its results come back as a derived run in the same catalog
and as a CXI file. At the end: a PNG laid out like the paper's Fig. 3 and a summary
JSON. Everything it starts it stops, also on Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..instrument.scan import ScanPattern
from ..io.catalog import data_dir, default_catalog, last_scan_id, open_catalog, server_pids, writer_batch
from ..sim.scoring import score_recon
from ..sim.settings import SampleModel, SimConfig
from ..stream.priority import lower_priority

log = logging.getLogger(__name__)

DARK_WAIT_S = 30.0  # the longest the scan waits for the pipeline to end the dark run


#: over EPICS, the CPU priority the pipeline's handler and workers and the embedded catalog server give up to
#: the IOC and the RunEngine sharing the host (both are buffered: they catch up, a late trigger never does)
PROCESSING_NICE = 5


@dataclass
class DemoResult:
    frames: int
    dark_frames: int
    acquisition_s: float
    last_frame_to_final_s: float | None
    frames_per_s: float | None
    acquisition_frames_per_s: float
    max_update_gap_s: float | None
    nrmse: float | None
    nrmse_first_final: float | None
    last_frame_to_refined_s: float | None
    iterations: int | None
    residual: float | None
    frames_flagged: dict
    raw_uid: str
    dark_uid: str
    derived_uid: str | None
    scan_id: int
    catalog: str
    cxi: str | None
    png: str
    exit_status: str
    path: str = "in-process"  # the devices: "in-process" (simulated Ophyd devices) or "epics" (Channel Access)
    ioc: dict | None = None  # the EPICS path's IOC: prefix, port, pid, CPU seconds (scan, total)
    exposure_s: float | None = None
    live_updates: int | None = None  # live reconstruction updates received while the frames came
    max_update_gap_at_s: float | None = None  # when the largest gap ended, seconds after the first frame
    first_update_s: float | None = None  # the first live image, seconds after the first frame
    max_gap_between_updates_s: float | None = None  # the largest gap after the first image, up to the last frame
    stage_overruns: int | None = None  # live updates the reconstruction stage itself published late (its own count)
    #: the detector's frame rate: frames after the first over the time from the first to the last (the run's
    #: opening and closing, staging and the shutter, are in ``acquisition_frames_per_s`` only)
    scan_frames_per_s: float | None = None


def parse_scan(text: str) -> tuple[int, int]:
    """``"40x40"`` to (rows, columns)."""
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ParameterError(f"--scan must look like 40x40 (rows x columns), got {text!r}") from None
    if ny < 1 or nx < 1:
        raise ParameterError(f"--scan needs at least 1x1 points, got {text!r}")
    return ny, nx


class _LastEvent:
    """Wall time of the first and last event of each run, as the RunEngine emits them."""

    def __init__(self):
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._descriptors: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor":
            self._descriptors[doc["uid"]] = doc["run_start"]
        elif name == "event":
            run = self._descriptors.get(doc["descriptor"], "")
            self.first.setdefault(run, doc["time"])
            self.last[run] = doc["time"]


class _ToldStop:
    """A run that ends other than 'success' is told the moment its stop document goes out, in one line: the
    RunEngine's cleanup, the pipeline's and the catalog's closing take seconds more before the command ends."""

    def __init__(self, say):
        self.say, self.told = say, False

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stop" and doc.get("exit_status") not in ("success", None):
            self.told = True
            reason = str(doc.get("reason") or "").splitlines()
            if reason and reason[0].startswith("_ExplainedStatus("):  # the device's words, not the status's repr
                reason[0] = reason[0].split("): ", 1)[-1]
            self.say(f"demo: stopped: the run ended '{doc['exit_status']}'" + (f": {reason[0]}" if reason else "")
                     + "; closing the pipeline and the catalog")


def figure(path: Path, *, view, raw: np.ndarray, title: str, rates: str, dx: float | None) -> Path:
    """The paper's Fig. 3: reconstruction phase and amplitude, STXM, probe, a raw and a cleaned frame, error curve, rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 4, figsize=(20, 10), constrained_layout=True)
    ax = ax.ravel()
    recon = view.recon
    if recon is not None:
        a = recon["arrays"]
        ext = None if dx is None else (0, a["object_phase"].shape[1] * dx * 1e6, a["object_phase"].shape[0] * dx * 1e6, 0)
        ax[0].imshow(a["object_phase"], cmap="gray", extent=ext)
        ax[0].set_title(f"reconstruction phase (µm), iteration {recon['scalars'].get('iteration')}")
        ax[1].imshow(a["object_amplitude"], cmap="gray", extent=ext, vmax=np.percentile(a["object_amplitude"], 99.5))
        ax[1].set_title("reconstruction amplitude")
        probe = a["probe_amplitude"] * np.exp(1j * a["probe_phase"])
        ax[3].imshow(np.abs(probe), cmap="magma")
        ax[3].set_title("probe amplitude")
    if view.stxm is not None:
        ax[2].imshow(view.stxm["transmission"], cmap="gray")
        ax[2].set_title("STXM transmission (scan grid)")
    ax[4].imshow(raw, cmap="gray", vmin=np.percentile(raw, 1), vmax=np.percentile(raw, 99.9))
    ax[4].set_title("raw FCCD frame (readout order, ADU)")
    if view.clean_pattern is not None:
        ax[5].imshow(np.log10(np.maximum(view.clean_pattern, 0.1)), cmap="magma", vmin=-1)
        ax[5].set_title("cleaned frame (log10 photons)")
    updates = [(it, res) for _, it, res, _ in view.recon_updates if it is not None and np.isfinite(res)]
    if updates:
        its, res = zip(*updates, strict=True)
        ax[6].semilogy(its, res, ".-")
    ax[6].set_xlabel("iteration")
    ax[6].set_title("data residual (live updates)")
    ax[7].axis("off")
    ax[7].text(0, 1, rates, va="top", family="monospace", fontsize=11)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def check_settings(rate_hz: float, darks: int, workers: int, exposure_s: float | None = None) -> None:
    """The demos' settings, for callers from Python (the command line checks its own as it reads them)."""
    if not (rate_hz >= 0 and math.isfinite(rate_hz)):
        raise ParameterError(f"--rate must be a finite number >= 0 frames/s (0 = as fast as possible), got {rate_hz}")
    if darks < 2:
        raise ParameterError(f"--darks must be >= 2 (the read noise needs two), got {darks}")
    if workers < 1:
        raise ParameterError(f"--workers must be >= 1, got {workers}")
    if exposure_s is not None and not (exposure_s > 0 and math.isfinite(exposure_s)):
        raise ParameterError(f"--exposure must be > 0 s, got {exposure_s}")


def run_demo(
    *,
    scan: tuple[int, int] = (40, 40),
    rate_hz: float = 10.0,
    darks: int = 20,
    pattern: str = "raster",
    out: str | os.PathLike = "demo-output",
    catalog: str | os.PathLike | None = None,
    sample_image: str | None = None,
    sample_name: str | None = None,
    exposure_s: float | None = None,
    seed: int = 0,
    workers: int = 2,
    engine: str = "lsqml",
    backend: str = "numpy",
    summary_json: str | os.PathLike | None = None,
    progress: bool = True,
    end_timeout_s: float = 300.0,
    refine_s: float = 60.0,
    prerendered: int = 0,
    epics: bool = False,
) -> DemoResult:
    """Run the demo; returns what it made (and writes the summary JSON, by default next to the PNG).

    ``prerendered`` (benchmarks): simulate that many frames first and cycle them, so a
    ``rate_hz=0`` run measures the pipeline rather than the simulator (no NRMSE then:
    the frames no longer match their positions).
    ``epics``: the devices are the EPICS beamline over Channel Access, served by the simulated
    IOC that the demo starts for the run on a free loopback port and stops on every exit path
    (:mod:`.demo_epics`); run it in a process whose Channel Access has not started yet.
    """
    check_settings(rate_hz, darks, workers)
    if epics and prerendered:
        raise ParameterError("prerendered frames are an in-process benchmark option: over EPICS the IOC "
                             "renders every frame itself (drop --epics or prerendered)")
    port = None
    if epics:
        from .demo_epics import point_channel_access

        port = point_channel_access()  # before Ophyd starts libca
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if exposure_s is None:  # COSMIC's 100 ms, shortened when the rate asks for more frames per second
        from .demo_epics import default_exposure_s

        exposure_s = default_exposure_s(rate_hz, epics)
    check_settings(rate_hz, darks, workers, exposure_s)
    image = None
    sample = SampleModel(name=sample_name or "siemens-star")
    if sample_image:
        from ..io.images import read_grayscale

        image = read_grayscale(sample_image)
        sample = SampleModel(image=str(Path(sample_image).resolve()), name=sample_name or Path(sample_image).stem)
    cfg = SimConfig(seed=seed, exposure_s=exposure_s, sample=sample, scan=ScanPattern(kind=pattern, shape=scan, overlap=0.7))
    target = default_catalog() if catalog is None else catalog
    if not str(target).startswith(("http://", "https://")):
        target = Path(target).expanduser().resolve()
    cat = open_catalog(target)
    detectors = data_dir(target, cat)  # a served catalog: the directory its server reads detector files from
    remote = None  # the EPICS path's IOC and beamline; stopped in the finally below, whatever happens
    try:
        if epics:
            from ..sim import PtychoSimulation
            from .demo_epics import start_epics_demo

            sim = PtychoSimulation(cfg, image=image)  # the truth the IOC simulates, for the NRMSE
            remote = start_epics_demo(cfg, port=port, planned_m=sim.planned, rate_hz=rate_hz, exposure_s=exposure_s,
                                      workdir=out / "ioc", write_dir=detectors)
            beamline = remote.beamline
            print(f"EPICS path: IOC {remote.description.prefix} on 127.0.0.1:{port} (pid {remote.ioc.pid}, "
                  f"log {remote.ioc.log_path})", flush=True)
        else:
            from ..ophyd_devices import make_sim_beamline

            beamline = make_sim_beamline(detectors, cfg, image=image, rate_hz=rate_hz)
            sim = beamline.sim
        return _run(beamline, sim, remote, cat, target, detectors, cfg, out, scan=scan, rate_hz=rate_hz, darks=darks,
                    pattern=pattern, seed=seed, workers=workers, engine=engine, backend=backend,
                    summary_json=summary_json, progress=progress, end_timeout_s=end_timeout_s, refine_s=refine_s,
                    prerendered=prerendered)
    finally:
        if remote is not None:
            remote.close()


def _run(beamline, sim, remote, cat, target, detectors: Path, cfg: SimConfig, out: Path, *, scan, rate_hz, darks,
         pattern, seed, workers, engine, backend, summary_json, progress, end_timeout_s, refine_s, prerendered) -> DemoResult:
    """Darks, scan, live reconstruction and the summary, on either beamline (``remote``: the EPICS path's IOC)."""
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from ..callbacks import ProgressBar
    from ..callbacks.bridge import PipelineBridge
    from ..callbacks.spool import catalog_writer
    from ..io.terminal import Ticker
    from ..plans import dark_frames, ptycho_scan
    from ..stages.pipeline import ptycho_pipeline
    from .ctrl_c import StopOnCtrlC
    from .session import PipelineSession

    if prerendered:
        from ..ophyd_devices import ReplaySource

        bank = np.stack([sim.raw_frame(sim.planned[i % len(sim.planned)], i) for i in range(prerendered)])
        beamline.fccd.source = ReplaySource(bank, np.stack([sim.raw_frame(None, i) for i in range(4)]), sim.geom)
    # at a set rate the live updates must keep coming on a busy machine: the reconstruction is not SCHED_IDLE then.
    # Over EPICS it is, and the rest of the processing and the catalog run at PROCESSING_NICE: the IOC shares this
    # host (at a beamline it has its own), and the acquisition's rate comes first (40 x 40 at 10 Hz on 2 idle cores:
    # 7.9 frames/s with the reconstruction at nice 0; over 20 x 20 at load 20 the points whose trigger came too late
    # for the period fell from 77 of 419 to 41 with the processing at nice 5)
    pipe_cfg = ptycho_pipeline(frame_workers=workers, engine=engine, backend=backend, out_dir=out, refine_s=refine_s,
                               recon_idle=rate_hz == 0 or remote is not None,
                               nice=PROCESSING_NICE if remote is not None else 0)

    ctrl_c = StopOnCtrlC()  # a command: Ctrl-C stops now, in whichever run (bluesky's would pause at a checkpoint)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False, context_managers=[ctrl_c.for_engine])
    batch = writer_batch(rate_hz)  # about 2.5 s of frames per catalog request
    # spooled on disk first: a catalog server that dies mid-scan is restarted and loses nothing (callbacks/spool.py)
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    raw_writer = catalog_writer(target, batch_size=batch, say=say)
    events = _LastEvent()
    stopped = _ToldStop(say)
    RE.subscribe(raw_writer)
    RE.subscribe(stopped)
    RE.subscribe(events)
    RE.subscribe(ProgressBar(disable=not progress))
    total = scan[0] * scan[1] if pattern == "raster" else None
    bridge = closing = None
    try:
        with PipelineSession(cat, None, pipe_cfg, out / "pipeline", detectors=detectors, progress=progress, total=total,
                             batch_size=batch, catalog_target=target, say=say) as session:
            bridge = PipelineBridge(pipe_cfg)
            RE.subscribe(bridge)
            if remote is not None:  # the catalog may lag behind the scan (it is spooled), the scan not behind it
                for pid in server_pids():  # in a session of its own (Ctrl-C must not reach it): its group too
                    lower_priority(pid, PROCESSING_NICE)
            if progress:
                print(f"watch it live: ns-bluesky gui live --config {out / 'pipeline' / 'pipeline.json'}", flush=True)
            (dark_uid,) = RE(dark_frames(beamline.fccd, beamline.shutter, darks, md={"sample_name": cfg.sample.name}))
            ctrl_c.raise_if_pressed()
            # the scan's frames wait in the pipeline until the dark is handed out (``dark_uid``): start the scan once
            # the pipeline has ended the dark run, not 1-1.5 s before (on a loaded machine), so that its first frames
            # are cleaned at once and the first live image follows them; a pipeline that does not end it within
            # DARK_WAIT_S is not waited for (its frames are then cleaned without it after wait_timeout_s, flagged)
            try:
                session.flush(bridge, dark_uid, DARK_WAIT_S)
            except TimeoutError:
                log.warning("the pipeline did not take the dark run within %g s; the scan starts anyway", DARK_WAIT_S)
            else:
                if session.monitor.wait_end(dark_uid, DARK_WAIT_S).ended is None:
                    log.warning("the pipeline did not end the dark run within %g s; the scan starts anyway", DARK_WAIT_S)
            ctrl_c.raise_if_pressed()
            t0 = time.monotonic()
            ioc_cpu0 = remote.ioc.cpu_s() if remote else None
            (raw_uid,) = RE(
                ptycho_scan(
                    beamline.fccd, beamline.stage, beamline.shutter, pattern=pattern, shape=scan, overlap=0.7,
                    optics=beamline.optics, sample=cfg.sample.name, dark_uid=dark_uid,
                    md={"simulation": {"seed": seed, "config": cfg.model_dump(mode="json")}},
                )
            )
            ctrl_c.raise_if_pressed()
            acquisition_s = time.monotonic() - t0
            ioc_cpu1 = remote.ioc.cpu_s() if remote else None
            session.flush(bridge, raw_uid, end_timeout_s)
            view = session.finish(raw_uid, end_timeout_s)
            derived_uid = session.recorder.finished.get(raw_uid)
            closing = Ticker(say, "demo: closing the pipeline and the catalog's writers").start()
    except (RunEngineInterrupted, KeyboardInterrupt):
        if RE.state != "idle":
            RE.abort("interrupted by the user (Ctrl-C)")
        raise KeyboardInterrupt from None
    except Exception as exc:  # told now (unless the run's stop document was): closing things takes seconds more
        if not stopped.told:
            why = exc.__cause__ if type(exc).__name__ == "FailedStatus" and exc.__cause__ is not None else exc
            say(f"demo: stopped: {str(why).splitlines()[0] if str(why) else type(why).__name__}; closing the "
                f"pipeline and the catalog")
        raise
    finally:
        if bridge is not None:
            bridge.close()
        raw_writer.close()
        if closing is not None:
            closing.stop()

    ticker = Ticker(say, "demo: reading the scan back, scoring it and drawing its picture").start()  # never silent
    cat = raw_writer.catalog  # the server that answers now (restarted, if the first one died)
    run = cat[raw_uid]
    start = run.metadata["start"]
    n = int(start["num_points"])
    scan_id = int(start["scan_id"])
    if view.ended is None:
        log.error("the pipeline did not finish run %s within %g s", raw_uid[:8], end_timeout_s)
    nrmse_value = nrmse_first = None
    if view.recon is not None and not prerendered:
        nrmse_value = score_recon(sim, start, view.recon)
        if view.first_final is not None:
            nrmse_first = score_recon(sim, start, view.first_final)
    last_event = events.last.get(raw_uid)
    to_final = (view.final_at - last_event) if view.final_at and last_event else None
    to_refined = (view.refined_at - last_event) if view.refined_at and last_event else None
    first = events.first.get(raw_uid)
    frame_rate = (n - 1) / (last_event - first) if n > 1 and first and last_event and last_event > first else None
    e2e = n / (view.last_clean_at - first) if view.last_clean_at and first and view.last_clean_at > first else None
    times = [t for t, *_ in view.recon_updates]
    during = [t for t in times if last_event is None or t <= last_event]  # live updates while frames came
    gaps = np.diff([first, *during, last_event]) if first and last_event and times else []
    gap_at = float(([*during, last_event][int(np.argmax(gaps))] - first)) if len(gaps) else None
    between = np.diff([*during, last_event]) if during and last_event else []
    ioc = None
    if remote is not None:
        scan_cpu = ioc_cpu1 - ioc_cpu0 if ioc_cpu0 is not None and ioc_cpu1 is not None else None
        ioc = {**remote.info, "cpu_s_scan": None if scan_cpu is None else round(scan_cpu, 3),
               "cpu_s_total": remote.ioc.cpu_s(),
               "cpu_s_per_frame": None if scan_cpu is None else round(scan_cpu / n, 5),
               "cpu_core_percent": None if scan_cpu is None else round(100 * scan_cpu / acquisition_s, 1)}
    path = "epics" if remote is not None else "in-process"
    rates = "\n".join([
        f"path              {path}" + (f" (IOC {ioc['prefix']} on 127.0.0.1:{ioc['port']})" if ioc else ""),
        f"frames            {n} ({view.usable} usable)",
        f"acquisition       {acquisition_s:.1f} s ({n / acquisition_s:.2f} frames/s"
        + (f"; {frame_rate:.2f} from the first frame to the last)" if frame_rate else ")"),
        f"end to end        {e2e:.1f} frames/s" if e2e else "end to end        -",
        f"last frame->final {to_final:.2f} s" if to_final is not None else "last frame->final -",
        f"live updates      {len(times)}, largest gap {max(gaps):.1f} s during the scan" if len(gaps) else "live updates      0",
        f"refined image     {to_refined:.1f} s after the last frame" if to_refined is not None else "refined image     -",
        f"NRMSE vs truth    {nrmse_value:.4f} (final image {nrmse_first:.4f})" if nrmse_first is not None
        else f"NRMSE vs truth    {nrmse_value:.4f}" if nrmse_value is not None else "NRMSE vs truth    -",
        f"flags             {dict(view.flags) or 'none'}",
        *([f"reconstruction    {view.cut_short}"] if view.cut_short else []),
        *([f"IOC CPU           {ioc['cpu_s_per_frame'] * 1e3:.1f} ms/frame, {ioc['cpu_core_percent']:.0f} % of a core"]
          if ioc and ioc["cpu_s_per_frame"] is not None else []),
    ])
    raw0 = np.asarray(run["primary"][f"{beamline.fccd.name}_image"][0])
    png = figure(out / f"scan_{scan_id:05d}.png", view=view, raw=raw0, rates=rates,
                 dx=float(view.recon["meta"]["object_pixel_size_m"]) if view.recon else None,
                 title=f"scan {scan_id}: {cfg.sample.name}, {n} frames ({path}), live {engine} reconstruction")
    final = view.recon["scalars"] if view.recon else {}
    result = DemoResult(
        frames=n,
        dark_frames=darks,
        acquisition_s=round(acquisition_s, 3),
        last_frame_to_final_s=None if to_final is None else round(to_final, 3),
        frames_per_s=None if e2e is None else round(e2e, 2),
        acquisition_frames_per_s=round(n / acquisition_s, 2),
        max_update_gap_s=round(float(max(gaps)), 2) if len(gaps) else None,
        nrmse=None if nrmse_value is None else round(nrmse_value, 4),
        nrmse_first_final=None if nrmse_first is None else round(nrmse_first, 4),
        last_frame_to_refined_s=None if to_refined is None else round(to_refined, 3),
        iterations=final.get("iteration"),
        residual=final.get("residual"),
        frames_flagged=dict(view.flags),
        raw_uid=raw_uid,
        dark_uid=dark_uid,
        derived_uid=derived_uid,
        scan_id=scan_id,
        catalog=str(target),
        cxi=next((p for p in view.cxi if p.endswith("_clean.cxi")), None),
        png=str(png),
        exit_status=run.metadata["stop"]["exit_status"],
        path=path,
        ioc=ioc,
        exposure_s=cfg.exposure_s,
        live_updates=len(during),
        max_update_gap_at_s=None if gap_at is None else round(gap_at, 2),
        first_update_s=round(float(during[0] - first), 2) if during and first else None,
        max_gap_between_updates_s=round(float(max(between)), 2) if len(between) else None,
        stage_overruns=(view.first_final or {}).get("scalars", {}).get("overruns"),
        scan_frames_per_s=None if frame_rate is None else round(frame_rate, 3),
    )
    summary = Path(summary_json) if summary_json else out / "summary.json"
    summary.write_text(json.dumps(asdict(result), indent=2))
    ticker.stop()
    print(rates)
    return result
