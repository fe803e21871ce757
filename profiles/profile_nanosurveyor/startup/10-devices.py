"""Devices: the simulated COSMIC-like beamline (FCCD, sample stage, shutter, zone-plate optics)."""

from ns_bluesky.ophyd_devices import make_sim_beamline

from ns_bluesky.io.catalog import detector_dir

beamline = make_sim_beamline(detector_dir(CATALOG_DIR), rate_hz=10)  # noqa: F821  (00-base)
fccd, stage, shutter, optics = beamline.fccd, beamline.stage, beamline.shutter, beamline.optics
print("[10-devices] fccd, stage (x, y), shutter, optics: the simulated beamline at 10 frames/s")
