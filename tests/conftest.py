"""Shared fixtures: a real RunEngine, the simulated beamline and one embedded tiled catalog per session."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from bluesky import RunEngine

from ns_bluesky.catalog import detector_dir, make_tiled_writer, open_catalog
from ns_bluesky.config import ELECTRON_VOLT_J, ScanPattern, SimConfig
from ns_bluesky.sim.experiment import PtychoSimulation
from ns_bluesky.stream.protocol import Message

# The suite writes about 2.5 GB (raw FCCD frames in the session catalog, CXI files); on a
# fuller disk SQLite fails mid-run with "database or disk is full", far from the cause.
NEEDED_FREE_BYTES = 4 * 2**30


def pytest_sessionstart(session):
    import shutil

    base = session.config._tmp_path_factory.getbasetemp()
    free = shutil.disk_usage(base).free
    if free < NEEDED_FREE_BYTES:
        pytest.exit(f"only {free / 2**30:.1f} GiB free under {base}; the test suite writes about 2.5 GiB of "
                    f"detector frames and catalog data and needs {NEEDED_FREE_BYTES / 2**30:.0f} GiB", returncode=1)


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="session")
def cat(catalog_dir):
    return open_catalog(catalog_dir)


@pytest.fixture(scope="session")
def small_config():
    return SimConfig(scan=ScanPattern(shape=(4, 5), overlap=0.7))


@pytest.fixture
def beamline(catalog_dir, small_config):
    from ns_bluesky.ophyd_devices import make_sim_beamline

    return make_sim_beamline(detector_dir(catalog_dir), small_config, rate_hz=0)


@pytest.fixture
def RE():
    return RunEngine({}, call_returns_result=False)


@pytest.fixture(scope="session")
def recorded(cat, catalog_dir, small_config):
    """Two samples' dark + scan runs, written through TiledWriter, with every document kept."""
    from ns_bluesky.ophyd_devices import make_sim_beamline
    from ns_bluesky.plans import dark_frames, ptycho_scan

    from ns_bluesky.catalog import last_scan_id

    bl = make_sim_beamline(detector_dir(catalog_dir), small_config, rate_hz=0)
    RE = RunEngine({"scan_id": last_scan_id(cat)}, call_returns_result=False)  # scan ids of their own, whatever ran before
    docs: list[tuple[str, dict]] = []
    frames: list[np.ndarray] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    writer = make_tiled_writer(cat)
    RE.subscribe(writer)
    original_write = bl.fccd.writer.write

    def spy(frame):
        frames.append(frame.copy())
        return original_write(frame)

    bl.fccd.writer.write = spy
    (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 4))
    n_dark = len(frames)
    (scan,) = RE(
        ptycho_scan(
            bl.fccd, bl.stage, bl.shutter, shape=(4, 5), overlap=0.7, optics=bl.optics, sample="star", dark_uid=dark
        )
    )
    (other,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, optics=bl.optics, shape=(2, 2), step=50e-9, sample="gold-balls"))
    return {
        "dark": dark,
        "scan": scan,
        "other": other,
        "docs": docs,
        "dark_frames": np.stack(frames[:n_dark]),
        "scan_frames": np.stack(frames[n_dark : n_dark + 20]),
        "beamline": bl,
    }


class SimScan:
    """A small simulated scan as the modules see it: start documents like the plans write, raw FCCD frames."""

    def __init__(self, shape=(4, 4), seed=0):
        self.cfg = SimConfig(seed=seed, scan=ScanPattern(shape=shape, overlap=0.7), noise={"dead_channel": 17})
        self.sim = PtychoSimulation(self.cfg)
        self.dark_uid, self.uid = str(uuid.uuid4()), str(uuid.uuid4())
        g, o = self.cfg.detector, self.cfg.optics
        det = {"detector_geometry": g.model_dump(mode="json"), "energy_eV": self.cfg.energy_eV,
               "energy_J": self.cfg.energy_eV * ELECTRON_VOLT_J}
        self.dark_doc = {"uid": self.dark_uid, "purpose": "dark", "num_points": 4, **det}
        self.doc = {
            "uid": self.uid, "purpose": "ptychography", "scan_id": 7, "sample_name": "star", "dark_uid": self.dark_uid,
            "num_points": len(self.sim.planned), "planned_positions_m": self.sim.planned.tolist(),
            "motors": ["stage_y", "stage_x"], "scan": {"step_m": float(np.abs(np.diff(self.sim.planned[:2], axis=0)).max())},
            "probe_optics": {"kind": "fresnel_zone_plate", "diameter_m": o.diameter_m, "outer_zone_width_m": o.outer_zone_width_m,
                             "central_stop_diameter_m": o.central_stop_diameter_m, "defocus_m": o.defocus_m},
            **det,
        }

    def start(self, dark: bool = False) -> Message:
        doc = self.dark_doc if dark else self.doc
        return Message("start", run=doc["uid"], meta={"start": doc})

    def dark_frame(self, seq: int) -> Message:
        return Message("frame", run=self.dark_uid, seq=seq, arrays={"raw": self.sim.raw_frame(None, 1000 + seq)})

    def frame(self, seq: int) -> Message:
        y, x = self.sim.planned[seq - 1]
        return Message("frame", run=self.uid, seq=seq, meta={"data": {"stage_y": float(y), "stage_x": float(x)}},
                       arrays={"raw": self.sim.raw_frame(self.sim.planned[seq - 1], seq)})


@pytest.fixture(scope="session")
def sim_scan():
    return SimScan()


def process_running(pid: int) -> bool:
    """Running (or stopped) but not exited; a zombie, exited and not yet reaped, is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
