"""Reprocessing from history: a stored raw run (and its dark run) streamed through the pipeline again.

``ns-bluesky replay RUN`` reads the frames and stage readings back from the catalog,
sends them as the bridge would have during the scan, and the pipeline stores a new
derived run linked to the same raw run: the way to process a scan taken while the
pipeline was down, or again with another engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import CatalogError, ParameterError
from ..stream.client import IngestClient
from ..stream.protocol import Message, start_message

BLOCK = 16  # frames read from the catalog at once


def stream_run(client: IngestClient, run, *, progress: bool = False) -> int:
    """Send one stored run (start, every primary frame with its readings, stop); returns its frame count."""
    start = dict(run.metadata["start"])
    uid = start["uid"]
    detectors = start.get("detectors") or []
    if not detectors:
        raise ParameterError(f"run {uid[:8]} names no detector: nothing to replay")
    primary = run["primary"]
    key = f"{detectors[0]}_image"
    if key not in primary:
        raise ParameterError(f"run {uid[:8]} has no {key} in its primary stream (found: {', '.join(primary)})")
    scalars = {k: np.asarray(primary[k].read()) for k in primary if k != key and not k.startswith("ts_") and primary[k].shape[1:] == ()}
    times = scalars.pop("time", None)
    n = primary[key].shape[0]
    client.send(start_message(start), timeout_s=60)
    with tqdm(total=n, desc=f"replay {uid[:8]}", unit="frame", disable=not progress) as bar:
        for i0 in range(0, n, BLOCK):
            block = np.asarray(primary[key][i0 : i0 + BLOCK])
            for k, raw in enumerate(block):
                i = i0 + k
                data = {name: values[i].item() for name, values in scalars.items() if name != "seq_num"}
                seq = int(scalars["seq_num"][i]) if "seq_num" in scalars else i + 1
                meta = {"data": data, "time": float(times[i]) if times is not None else 0.0, "replay": True}
                client.send(Message("frame", run=uid, seq=seq, meta=meta, arrays={"raw": raw}), timeout_s=60)
                bar.update(1)
    stop = run.metadata.get("stop") or {}
    client.send(Message("stop", run=uid, meta={"exit_status": stop.get("exit_status"), "reason": stop.get("reason", ""), "num_frames": n}), timeout_s=60)
    return n


def replay(
    run_id: str,
    *,
    catalog: str | os.PathLike | None = None,
    out: str | os.PathLike = "replay-output",
    workers: int = 2,
    engine: str = "lsqml",
    backend: str = "numpy",
    progress: bool = True,
    end_timeout_s: float = 600.0,
    refine_s: float = 60.0,
) -> dict:
    """Replay ``run_id`` (uid, uid prefix or scan id) through a private pipeline; returns uids and paths."""
    from ..io.catalog import data_dir, default_catalog, get_run, open_catalog
    from ..stages.pipeline import ptycho_pipeline
    from .session import PipelineSession

    cat_dir = default_catalog() if catalog is None else catalog
    if not str(cat_dir).startswith(("http://", "https://")):
        cat_dir = Path(cat_dir).expanduser().resolve()
    cat = open_catalog(cat_dir, create=False)
    try:
        run = get_run(cat, run_id)
    except CatalogError:
        raise ParameterError(f"no run {run_id!r} in the catalog at {cat_dir}") from None
    start = run.metadata["start"]
    if start.get("parent_uid"):
        raise ParameterError(f"run {start['uid'][:8]} is a derived run; replay its raw run: "
                             f"ns-bluesky replay {start['parent_uid'][:8]}")
    if start.get("purpose") != "ptychography":
        raise ParameterError(f"run {start['uid'][:8]} is a {start.get('purpose') or 'plain'} run, not a ptychography scan")
    dark = None
    if start.get("dark_uid"):
        try:
            dark = cat[start["dark_uid"]]
        except KeyError:
            print(f"replay: the dark run {start['dark_uid'][:8]} is not in the catalog; frames are cleaned without it")
    out = Path(out).resolve()
    cfg = ptycho_pipeline(frame_workers=workers, engine=engine, backend=backend, out_dir=out, refine_s=refine_s)
    n = int(start.get("num_points") or 0)
    with PipelineSession(cat, None, cfg, out / "pipeline", progress=progress, total=n or None,
                         detectors=data_dir(cat_dir, cat), catalog_target=cat_dir) as session:
        client = IngestClient(cfg)
        try:
            if dark is not None:
                stream_run(client, dark)
            stream_run(client, run, progress=False)
            client.flush(timeout_s=end_timeout_s)
        finally:
            client.close()
        view = session.finish(start["uid"], end_timeout_s)
        derived = session.recorder.finished.get(start["uid"])
    if view.ended is None:
        raise ParameterError(f"the pipeline did not finish run {start['uid'][:8]} within {end_timeout_s:g} s; see {out / 'pipeline' / 'logs'}")
    final = view.recon["scalars"] if view.recon else {}
    return {
        "raw_uid": start["uid"], "derived_uid": derived, "frames": view.processed, "usable": view.usable,
        "flags": dict(view.flags), "iterations": final.get("iteration"), "residual": final.get("residual"),
        "cxi": next((p for p in view.cxi if p.endswith("_clean.cxi")), None), "errors": view.errors[:20],
    }
