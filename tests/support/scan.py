"""A small simulated scan as the stages see it: start documents like the plans write, raw FCCD frames."""

from __future__ import annotations

import uuid

import numpy as np

from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.instrument.units import ELECTRON_VOLT_J
from ns_bluesky.sim.experiment import PtychoSimulation
from ns_bluesky.sim.settings import SimConfig
from ns_bluesky.stream.protocol import Message


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
