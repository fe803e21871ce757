"""``ns-bluesky demo --adaptive``: the adaptive loop end to end, on a sample with an empty half and faults.

Why: ``adaptive_ptycho`` decides while it scans (where the sample is, which frames to take
again, whether the sample slipped); the plain demo never shows that. Here the same
embedded catalog, simulated beamline, pipeline and RunEngine as ``ns-bluesky demo`` run
the adaptive plan with the pipeline's feedback on the Siemens star (or ``--sample-image``)
with its right half empty, and the simulator injects faults (:mod:`ns_bluesky.sim.faults`)
at light frames scheduled from the scan's size: a dropped packet in the coarse pass, a
saturation burst and a beam loss in the fine scan, and the sample slipping on its stage
part way through. The PNG draws what the plan decided over the STXM map (the region
chosen, the points skipped, the frames taken again, the drift reference) next to the
live reconstruction; ``summary.json`` has the counts (frames saved, re-measured, drift
injected, detected and corrected) and every decision with its reason. On a raster or, with
``pattern="fermat"`` (``--pattern fermat``), a Fermat spiral of rows x columns points.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..instrument.scan import ScanPattern, fermat_spiral
from ..io.catalog import data_dir, default_catalog, last_scan_id, open_catalog, writer_batch
from ..ptycho.adaptive import coarse_points, coarse_subset
from ..sim.faults import Faults, StageDrift
from ..sim.settings import SampleModel, SimConfig

COARSE_EVERY = 3
#: the decisions of which each drift check records exactly one
DRIFT_CHECKS = ("drift_check", "drift_verified", "drift_detected", "drift_uncorrected", "drift_check_skipped")


@dataclass
class AdaptiveDemoResult:
    grid_points: int  # points of the raster (or spiral) the plan could have measured
    frames: int  # primary events taken: coarse pass, region, frames taken again, drift probes
    frames_saved: int  # raster points the region of interest left out (never measured)
    frames_remeasured: int  # frames taken again because the pipeline flagged them (faults)
    frames_remeasured_after_drift: int  # frames taken again because the sample had moved under them
    drift_checks: int
    drift_injected_m: list  # (y, x) the simulator's jump
    drift_detected_m: list | None  # the first drift the plan measured
    drift_corrected_m: list  # the stage's user offsets at the end (y, x)
    faults: dict  # the schedule, in light frames
    flags: dict  # the pipeline's flags over the run: flag -> frames
    decisions: list  # [{action, reason, frames}], in order
    acquisition_s: float
    raw_uid: str
    dark_uid: str
    derived_uid: str | None
    scan_id: int
    catalog: str
    cxi: str | None
    png: str
    exit_status: str
    pattern: str = "raster"  # or "fermat": a spiral of rows x columns points


def coarse_count(pattern: str, shape: tuple[int, int], coarse_every: int = COARSE_EVERY) -> int:
    """How many points the plan's coarse pass takes (as ``adaptive_ptycho`` chooses them)."""
    if pattern == "raster":
        return len(coarse_points(shape, coarse_every))
    return len(coarse_subset(fermat_spiral(shape[0] * shape[1], 1.0), float(coarse_every), outside_in=True))


def fault_schedule(shape: tuple[int, int], step_m: float, coarse_every: int = COARSE_EVERY,
                   pattern: str = "raster") -> tuple[Faults, dict]:
    """Faults at light frames placed from the scan's size, and the plan's ``drift_every``: a dropped packet in
    the coarse pass, a saturation burst in the 5 x 5 drift reference (25 points on a spiral), a beam loss early
    in the fine scan, and the sample slipping half way to the first drift check."""
    ny, nx = shape
    coarse = coarse_count(pattern, shape, coarse_every)
    fine = max(10, ny * nx // 2 - coarse - 25)  # the occupied half, less the reference patch
    every = max(8, fine // 4)
    start = coarse + 25 + every // 2 + 2
    jump = (0.3 * step_m, -0.2 * step_m)  # 2.4 times the plan's drift tolerance (0.15 steps)
    schedule = {"dropped_packets": [1], "saturation": [coarse + 5], "beam_loss": [coarse + 27, coarse + 28],
                "drift": {"start": start, "jump_m": list(jump)}, "drift_every": every}
    faults = Faults.make(dropped_packets=schedule["dropped_packets"], saturation=schedule["saturation"],
                         beam_loss=schedule["beam_loss"], drift=StageDrift(start=start, jump_m=jump))
    return faults, schedule


def _decisions(docs: list[tuple[str, dict]], uid: str) -> list[dict]:
    """The run's ``adaptive`` events as the RunEngine emitted them, lists decoded."""
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor" and d["run_start"] == uid}
    out = []
    for name, doc in docs:
        if name == "event" and streams.get(doc["descriptor"]) == "adaptive":
            data = doc["data"]
            out.append({"action": data["adaptive_action"], "reason": data["adaptive_reason"],
                        "positions": np.asarray(json.loads(data["adaptive_positions"]), float).reshape(-1, 2),
                        "seqs": json.loads(data["adaptive_seqs"]), "detail": json.loads(data["adaptive_detail"])})
    return out


def transmission_map(qc: dict[int, dict], grid: np.ndarray) -> np.ndarray:
    """The STXM signal per raster point: the latest usable frame's transmission there (NaN: never measured)."""
    out = np.full(len(grid), np.nan)
    for seq in sorted(qc):
        s = qc[seq]
        if s.get("usable"):
            out[int(np.argmin(np.hypot(*(grid - (s["position_y"], s["position_x"])).T)))] = s["transmission"]
    return out


def _on_sample(positions_m: np.ndarray) -> np.ndarray:
    """Stage translations (m) to the probe's position on the sample (µm): minus the translation, so the map
    is oriented as the reconstruction is (``docs/conventions.md``)."""
    return -np.asarray(positions_m, float).reshape(-1, 2) * 1e6


def _outline(p: np.ndarray, shape: tuple[int, int], chosen: np.ndarray, step: float) -> list:
    """Cell edges around the region of interest: its fine points, and the coarse points inside it (two or more
    of their four neighbours chosen); segments in the coordinates of ``p`` (the raster's points, row-major)."""
    ny, nx = shape
    near = np.hypot(*(p[:, None, :] - chosen[None, :, :]).transpose(2, 0, 1)).min(axis=1) < 0.5 * step
    keep = near.reshape(shape)
    padded = np.pad(keep, 1)
    inside = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    coarse = np.zeros(ny * nx, bool)
    coarse[coarse_points(shape, COARSE_EVERY)] = True
    keep = keep | (coarse.reshape(shape) & (inside >= 2))
    py, px = p[:, 0].reshape(shape), p[:, 1].reshape(shape)
    dy = (py[1, 0] - py[0, 0]) / 2 if ny > 1 else step / 2
    dx = (px[0, 1] - px[0, 0]) / 2 if nx > 1 else step / 2
    segments = []
    for r, c in zip(*np.nonzero(keep), strict=True):
        y, x = py[r, c], px[r, c]
        if r == 0 or not keep[r - 1, c]:
            segments.append([(x - dx, y - dy), (x + dx, y - dy)])
        if r == ny - 1 or not keep[r + 1, c]:
            segments.append([(x - dx, y + dy), (x + dx, y + dy)])
        if c == 0 or not keep[r, c - 1]:
            segments.append([(x - dx, y - dy), (x - dx, y + dy)])
        if c == nx - 1 or not keep[r, c + 1]:
            segments.append([(x + dx, y - dy), (x + dx, y + dy)])
    return segments


def figure(path: Path, *, grid: np.ndarray, shape: tuple[int, int], stxm: np.ndarray, decisions: list[dict], view,
           text: str, title: str, pattern: str = "raster") -> Path:
    """The STXM map with what the plan decided drawn over it, the live reconstruction, and the counts; on a
    spiral the map is a disc per point and the region's outline a contour over the points' triangles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots(1, 3, figsize=(22, 8), constrained_layout=True, gridspec_kw={"width_ratios": [1.15, 1, 1.1]})
    p = _on_sample(grid)
    raster = pattern == "raster"
    a = ax[0]
    a.set_facecolor("lightsteelblue")  # never measured
    if raster:
        py, px = p[:, 0].reshape(shape), p[:, 1].reshape(shape)
        step = float(np.median(np.abs(np.diff(px, axis=1)))) if shape[1] > 1 else 1.0
    else:
        from scipy.spatial import cKDTree

        px = p[:, 1]
        step = float(np.median(cKDTree(p).query(p, k=2)[0][:, 1])) if len(p) > 1 else 1.0  # the spiral's step
    width_pt = a.get_position().width * fig.get_figwidth() * 72
    cell = width_pt * step / (np.ptp(px) + step)  # one scan step in points
    if raster:
        mesh = a.pcolormesh(px, py, stxm.reshape(shape), shading="nearest", cmap="gray")
    else:
        seen = ~np.isnan(stxm)
        mesh = a.scatter(p[seen, 1], p[seen, 0], c=stxm[seen], cmap="gray", marker="o", s=cell**2, edgecolors="none")
        a.set_xlim(p[:, 1].min() - step, p[:, 1].max() + step)  # markers do not widen the limits: a step of margin
        a.set_ylim(p[:, 0].min() - step, p[:, 0].max() + step)
    fig.colorbar(mesh, ax=a, label="transmission (photons per frame)", shrink=0.8)
    a.set_aspect("equal")
    a.invert_yaxis()  # rows downwards, as the reconstruction is shown
    by: dict[str, list] = {}
    for d in decisions:
        by.setdefault(d["action"], []).append(d)

    def at(action: str) -> np.ndarray:
        return np.concatenate([_on_sample(d["positions"]) for d in by.get(action, [])] or [np.zeros((0, 2))])

    skipped = np.isnan(stxm)
    a.scatter(p[skipped, 1], p[skipped, 0], marker="x", c="0.35", s=(0.3 * cell) ** 2, label="skipped: never measured")
    coarse = at("coarse_pass")
    a.scatter(coarse[:, 1], coarse[:, 0], marker=".", c="tab:blue", s=(0.25 * cell) ** 2, label="coarse pass")
    chosen = at("region_of_interest")
    if len(chosen) and raster:
        a.add_collection(LineCollection(_outline(p, shape, chosen, step), colors="lime", linewidths=2.5))
    elif len(chosen):  # contoured over the points' triangles: what was measured less the coarse points found empty
        inside = ~skipped
        inside[[g for d in by["region_of_interest"] for g in d["detail"].get("empty_coarse_points", [])]] = False
        a.tricontour(p[:, 1], p[:, 0], inside.astype(float), levels=[0.5], colors="lime", linewidths=2.5)
    if len(chosen):
        a.plot([], [], color="lime", lw=2.5, label="region of interest (chosen)")
    again = at("remeasure")
    a.scatter(again[:, 1], again[:, 0], facecolors="none", edgecolors="red", marker="o", s=(0.8 * cell) ** 2,
              linewidths=2, label=f"taken again: flagged by the pipeline ({len(again)})")
    drifted = at("remeasure_drifted")
    a.scatter(drifted[:, 1], drifted[:, 0], marker="+", c="orange", s=(0.6 * cell) ** 2, linewidths=2,
              label=f"taken again: the sample had moved ({len(drifted)})")
    ref = at("drift_reference")
    if len(ref) and raster:
        a.add_patch(plt.Rectangle((ref[:, 1].min() - step / 2, ref[:, 0].min() - step / 2), np.ptp(ref[:, 1]) + step,
                                  np.ptp(ref[:, 0]) + step, fill=False, ec="cyan", lw=2, ls="--"))
    elif len(ref):  # the 25 points nearest a centre: the circle around them
        middle = ref.mean(axis=0)
        a.add_patch(plt.Circle((middle[1], middle[0]), float(np.hypot(*(ref - middle).T).max()) + step / 2, fill=False,
                               ec="cyan", lw=2, ls="--"))
    if len(ref):
        a.plot([], [], color="cyan", ls="--", lw=2, label="drift reference patch")
        centre = ref.mean(axis=0)
        for d in by.get("drift_detected", []):
            v = _on_sample(d["detail"]["drift_m"])[0] * 10
            a.annotate("", xy=(centre[1] + v[1], centre[0] + v[0]), xytext=(centre[1], centre[0]),
                       arrowprops={"arrowstyle": "->", "color": "magenta", "lw": 2.5})
        if by.get("drift_detected"):
            a.plot([], [], color="magenta", lw=2.5, label="drift detected (x 10)")
    a.set_xlabel("probe position on the sample, x (µm)")
    a.set_ylabel("y (µm)")
    a.set_title("STXM map (frame QC) and what the plan decided")
    recon = view.recon if view is not None else None
    if recon is not None:
        ax[1].imshow(recon["arrays"]["object_phase"], cmap="gray")
        ax[1].set_title(f"live reconstruction phase, iteration {recon['scalars'].get('iteration')}")
    else:
        ax[1].set_title("no reconstruction")
    ax[1].axis("off")
    ax[2].axis("off")
    ax[2].text(0, 1, text, va="top", family="monospace", fontsize=10)
    ax[2].legend(*a.get_legend_handles_labels(), loc="lower left", fontsize=10, title="on the map")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_adaptive_demo(
    *,
    scan: tuple[int, int] = (20, 20),
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
    refine_s: float = 30.0,
) -> AdaptiveDemoResult:
    """Run ``adaptive_ptycho`` with faults on a half-empty sample; returns what it decided (and writes
    the summary JSON, by default next to the PNG). ``pattern="fermat"``: a Fermat spiral of
    ``scan[0] * scan[1]`` points instead of the raster."""
    from ..sim import sample as sim_sample
    from .demo import check_settings
    from .demo_epics import default_exposure_s

    check_settings(rate_hz, darks, workers)
    if pattern not in ("raster", "fermat"):
        raise ParameterError(f"--pattern must be 'raster' or 'fermat', got {pattern!r}")
    if pattern == "fermat" and scan[0] * scan[1] < (2 * COARSE_EVERY + 1) ** 2:
        raise ParameterError(f"--adaptive --pattern fermat needs at least {(2 * COARSE_EVERY + 1) ** 2} points (a "
                             f"coarse pass {COARSE_EVERY} steps apart and a 25-point drift reference), got "
                             f"{scan[0]}x{scan[1]} = {scan[0] * scan[1]}")
    if pattern == "raster" and min(scan) < 2 * COARSE_EVERY + 1:
        raise ParameterError(f"--adaptive needs at least {2 * COARSE_EVERY + 1}x{2 * COARSE_EVERY + 1} points "
                             f"(a coarse pass every {COARSE_EVERY}. point and a 5 x 5 drift reference), got "
                             f"{scan[0]}x{scan[1]}")
    exposure_s = default_exposure_s(rate_hz, False) if exposure_s is None else exposure_s
    check_settings(rate_hz, darks, workers, exposure_s)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if sample_image:
        from ..io.images import read_grayscale

        image = read_grayscale(sample_image)
        sample = SampleModel(image=str(Path(sample_image).resolve()), name=(sample_name or Path(sample_image).stem) + ", right half empty")
    else:
        image = sim_sample.test_pattern()
        sample = SampleModel(name=(sample_name or "siemens-star") + ", right half empty")
    image = sim_sample.with_empty_region(image, "right")
    cfg = SimConfig(seed=seed, exposure_s=exposure_s, sample=sample, scan=ScanPattern(kind=pattern, shape=scan, overlap=0.7))
    target = default_catalog() if catalog is None else catalog
    if not str(target).startswith(("http://", "https://")):
        target = Path(target).expanduser().resolve()
    cat = open_catalog(target)
    detectors = data_dir(target, cat)
    from ..ophyd_devices import make_sim_beamline

    beamline = make_sim_beamline(detectors, cfg, image=image, rate_hz=rate_hz)
    step_m = cfg.optics.beam_diameter_m(cfg.energy_eV) * (1 - 0.7)
    faults, schedule = fault_schedule(scan, step_m, pattern=pattern)
    return _run(beamline, cat, target, detectors, cfg, out, faults, schedule, rate_hz=rate_hz, darks=darks, workers=workers,
                engine=engine, backend=backend, summary_json=summary_json, progress=progress, end_timeout_s=end_timeout_s,
                refine_s=refine_s)


def _run(bl, cat, target, detectors: Path, cfg: SimConfig, out: Path, faults: Faults, schedule: dict, *, rate_hz, darks,
         workers, engine, backend, summary_json, progress, end_timeout_s, refine_s) -> AdaptiveDemoResult:
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from ..callbacks import ProgressBar
    from ..callbacks.bridge import PipelineBridge
    from ..callbacks.feedback import AdaptiveFeedback
    from ..callbacks.spool import catalog_writer
    from ..plans import dark_frames
    from ..plans.adaptive import adaptive_ptycho
    from ..stages.pipeline import ptycho_pipeline
    from .ctrl_c import StopOnCtrlC
    from .session import PipelineSession

    pipe_cfg = ptycho_pipeline(frame_workers=workers, engine=engine, backend=backend, out_dir=out, refine_s=refine_s)
    ctrl_c = StopOnCtrlC()  # a command: Ctrl-C stops now, in whichever run (as the demo's)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False, context_managers=[ctrl_c.for_engine])
    batch = writer_batch(rate_hz)
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # spooled on disk first, as the demo's: a catalog server that dies mid-scan loses nothing (callbacks/spool.py)
    raw_writer = catalog_writer(target, batch_size=batch, say=say)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(raw_writer)
    RE.subscribe(lambda name, doc: docs.append((name, doc)) if name in ("descriptor", "event") else None)  # decisions
    RE.subscribe(ProgressBar(disable=not progress))
    bridge = feedback = None
    ny, nx = cfg.scan.shape
    try:
        with PipelineSession(cat, None, pipe_cfg, out / "pipeline", detectors=detectors, progress=progress,
                             batch_size=batch, catalog_target=target, say=say) as session:
            feedback = AdaptiveFeedback(pipe_cfg, keep_patterns=True)  # the drift check registers kept patterns
            bridge = PipelineBridge(pipe_cfg)
            RE.subscribe(bridge)
            if progress:
                print(f"watch it live: ns-bluesky gui live --config {out / 'pipeline' / 'pipeline.json'}", flush=True)
            (dark_uid,) = RE(dark_frames(bl.fccd, bl.shutter, darks, md={"sample_name": cfg.sample.name}))
            ctrl_c.raise_if_pressed()
            bl.fccd.source.faults, bl.fccd.source.light_frames = faults, 0  # the schedule counts this scan's light frames
            t0 = time.monotonic()
            (raw_uid,) = RE(adaptive_ptycho(
                bl.fccd, bl.stage, bl.shutter, feedback=feedback, optics=bl.optics, pattern=cfg.scan.kind, shape=(ny, nx),
                num_points=cfg.scan.num_points if cfg.scan.kind == "fermat" else None, overlap=0.7,
                coarse_every=COARSE_EVERY, drift_every=schedule["drift_every"], sample=cfg.sample.name, dark_uid=dark_uid,
                md={"simulation": {"seed": cfg.seed, "config": cfg.model_dump(mode="json"), "faults": schedule}},
            ))
            ctrl_c.raise_if_pressed()
            acquisition_s = time.monotonic() - t0
            session.flush(bridge, raw_uid, end_timeout_s)  # a dead handler ends the wait at once
            view = session.finish(raw_uid, end_timeout_s)
            derived_uid = session.recorder.finished.get(raw_uid)
            qc = feedback.qc(raw_uid)
    except (RunEngineInterrupted, KeyboardInterrupt):
        if RE.state != "idle":
            RE.abort("interrupted by the user (Ctrl-C)")
        raise KeyboardInterrupt from None
    finally:
        for part in (bridge, feedback, raw_writer):
            if part is not None:
                part.close()

    cat = raw_writer.catalog  # the server that answers now (restarted, if the first one died)
    run = cat[raw_uid]
    start = run.metadata["start"]
    grid = np.asarray(start["grid_positions_m"], float)
    decisions = _decisions(docs, raw_uid)
    actions = [d["action"] for d in decisions]
    roi = next((d for d in decisions if d["action"] == "region_of_interest"), None)
    saved = len(roi["detail"].get("skipped_points", [])) if roi else 0
    remeasured = sum(len(d["seqs"]) for d in decisions if d["action"] == "remeasure")
    after_drift = sum(len(d["seqs"]) for d in decisions if d["action"] == "remeasure_drifted")
    detected = next((d["detail"]["drift_m"] for d in decisions if d["action"] == "drift_detected"), None)
    offsets = [float(bl.stage.y.user_offset.get()), float(bl.stage.x.user_offset.get())]
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] == raw_uid and d["name"] == "primary"}
    frames = sum(1 for n, d in docs if n == "event" and d["descriptor"] in primary)
    checks = sum(1 for a in actions if a in DRIFT_CHECKS)
    scan_id = int(start["scan_id"])
    jump = schedule["drift"]["jump_m"]
    points = len(grid)
    layout = f"raster            {ny} x {nx} = {ny * nx} points" if cfg.scan.kind == "raster" else \
        f"Fermat spiral     {points} points"
    text = "\n".join([
        f"{layout}, right half of the sample empty",
        f"frames taken      {frames} in {acquisition_s:.1f} s ({frames / max(acquisition_s, 1e-9):.1f} frames/s)",
        f"frames saved      {saved} points skipped by the region of interest ({saved / points:.0%})",
        f"taken again       {remeasured} flagged by the pipeline, {after_drift} after the drift",
        f"faults injected   packet drop {schedule['dropped_packets']}, saturation {schedule['saturation']}, "
        f"beam loss {schedule['beam_loss']} (light frames)",
        f"pipeline flags    {dict(view.flags) or 'none'}",
        f"drift injected    {np.round(np.asarray(jump) * 1e9, 1).tolist()} nm (y, x) at light frame {schedule['drift']['start']}",
        "drift detected    " + (f"{np.round(np.asarray(detected) * 1e9, 1).tolist()} nm" if detected is not None else "no"),
        f"stage offsets now {np.round(np.asarray(offsets) * 1e9, 1).tolist()} nm ({checks} drift checks)",
        "",
        "decisions:",
        *[f"  {d['action']:<20s} {len(d['seqs']):4d} frames" for d in decisions],
    ])
    png = figure(out / f"scan_{scan_id:05d}_adaptive.png", grid=grid, shape=(ny, nx), stxm=transmission_map(qc, grid),
                 decisions=decisions, view=view, text=text, pattern=cfg.scan.kind,
                 title=f"scan {scan_id}: adaptive_ptycho on {cfg.sample.name}, {frames} frames, faults injected")
    result = AdaptiveDemoResult(
        grid_points=points, frames=frames, frames_saved=saved, frames_remeasured=remeasured,
        frames_remeasured_after_drift=after_drift, drift_checks=checks, drift_injected_m=list(jump),
        drift_detected_m=detected, drift_corrected_m=offsets, faults=schedule, flags=dict(view.flags),
        decisions=[{"action": d["action"], "reason": d["reason"], "frames": len(d["seqs"])} for d in decisions],
        acquisition_s=round(acquisition_s, 3), raw_uid=raw_uid, dark_uid=dark_uid, derived_uid=derived_uid,
        scan_id=scan_id, catalog=str(target), cxi=next((p for p in view.cxi if p.endswith("_clean.cxi")), None),
        png=str(png), exit_status=run.metadata["stop"]["exit_status"], pattern=cfg.scan.kind,
    )
    summary = Path(summary_json) if summary_json else out / "summary.json"
    summary.write_text(json.dumps(asdict(result), indent=2))
    print(text)
    return result
