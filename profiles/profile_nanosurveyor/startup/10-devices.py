"""Devices: the simulated COSMIC-like beamline (FCCD, sample stage, shutter, zone-plate optics), or the EPICS
beamline that ``$NS_BLUESKY_BEAMLINE`` describes (a YAML/TOML beamline description; its IOCs must answer)."""

import os

from ns_bluesky.io.catalog import detector_dir
from ns_bluesky.io.description import DESCRIPTION_ENV
from ns_bluesky.ophyd_devices import make_beamline

BEAMLINE_DESCRIPTION = os.environ.get(DESCRIPTION_ENV) or None
beamline = make_beamline(BEAMLINE_DESCRIPTION, detector_dir(CATALOG_DIR), rate_hz=10)  # noqa: F821  (00-base)
fccd, stage, shutter, optics = beamline.fccd, beamline.stage, beamline.shutter, beamline.optics
if BEAMLINE_DESCRIPTION:
    print(f"[10-devices] fccd, stage (x, y), shutter, optics: EPICS, as {BEAMLINE_DESCRIPTION} names them")
    if "RE" in globals():  # 00-base's: it waits for a lost beam or IOC instead of failing the scan
        suspenders = beamline.install_suspenders(RE)  # noqa: F821
        print(f"[10-devices] RE suspends while the beam ({beamline.beam.pvname}) is lost or an IOC is gone")
else:
    print("[10-devices] fccd, stage (x, y), shutter, optics: the simulated beamline at 10 frames/s")
