"""Make the EPICS beamline, write to it and release its channels, round after round, against one IOC.

Run as ``python -m tests.support.epics_release_rounds ROUNDS WORKDIR`` by tests/ophyd_devices/test_epics_release.py, in a
process of its own: what it guards against is a segfault.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.epics import IOCProcess, configure_session, release_channels

configure_session()

from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.io.catalog import detector_dir
from ns_bluesky.ophyd_devices import make_beamline


def main(rounds: int, workdir: Path) -> None:
    ioc = IOCProcess(workdir)
    try:
        for i in range(rounds):
            bl = make_beamline(BeamlineDescription(prefix=ioc.prefix), detector_dir(workdir))
            bl.fccd.acquire_time.put(0.02, wait=True)
            bl.stage.y.user_offset.set(1e-9).wait(5)
            release_channels([d for d in [*bl.devices.values(), bl.beam] if d is not None])
            print(f"round {i + 1} of {rounds}", flush=True)
    finally:
        ioc.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
