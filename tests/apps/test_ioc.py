"""``ns-bluesky ioc --simulation``: the IOC simulates the experiment it is given (what the EPICS demo relies on)."""

from __future__ import annotations

import subprocess
import sys

from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.instrument.scan import ScanPattern
from ns_bluesky.ophyd_devices.ioc.beamline import BeamlineIOC
from ns_bluesky.sim.settings import SampleModel, SimConfig


def test_the_ioc_simulates_the_given_experiment_and_serves_its_start_values():
    cfg = SimConfig(seed=7, exposure_s=0.03, energy_eV=710.0, sample=SampleModel(name="given"),
                    scan=ScanPattern(shape=(6, 6), overlap=0.7))
    ioc = BeamlineIOC(BeamlineDescription(prefix="SIMCFG:"), rate_hz=20, config=cfg)
    try:
        assert ioc.config == cfg and ioc.source.sim.config == cfg
        assert len(ioc.source.sim.planned) == 36  # the given scan, not the default 40 x 40
        assert ioc.description.ioc.exposure_s == 0.03 and ioc.description.ioc.energy_eV == 710.0
        assert ioc.optics.energy.value == 710.0 and ioc.cam.get("AcquireTime") == 0.03
        assert ioc.cam.get("AcquirePeriod") == 0.05
        ioc._follow_optics()  # the optics PVs hold what the simulation was built with: nothing to rebuild
        assert ioc.config is cfg
    finally:
        ioc.cam.close()


def test_a_bad_simulation_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "sim.json"
    bad.write_text('{"exposure_s": -1}')
    r = subprocess.run([sys.executable, "-m", "ns_bluesky.apps.ioc", "--simulation", str(bad)], capture_output=True,
                       text=True, timeout=60, env={"NS_BLUESKY_LOG": str(tmp_path / "log"), "PATH": ""})
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ns-bluesky ioc: error: --simulation ") and str(bad) in line and "exposure_s" in line
    r = subprocess.run([sys.executable, "-m", "ns_bluesky.apps.ioc", "--simulation", str(bad), "--seed", "3"],
                       capture_output=True, text=True, timeout=60, env={"NS_BLUESKY_LOG": str(tmp_path / "log")})
    assert r.returncode == 1 and "drop --seed" in r.stderr
