"""Shared fixtures: a real RunEngine, the simulated beamline and one embedded tiled catalog per session."""

from __future__ import annotations

from tests.support.epics import configure_session

configure_session()  # Channel Access on loopback ports of this session's own, before anything imports Ophyd

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bluesky import RunEngine  # noqa: E402

from ns_bluesky.instrument.scan import ScanPattern  # noqa: E402
from ns_bluesky.io.catalog import (  # noqa: E402
    close_catalogs,
    detector_dir,
    make_tiled_writer,
    open_catalog,
    started_catalogs,
)
from ns_bluesky.sim.settings import SimConfig  # noqa: E402
from tests.support.scan import SimScan  # noqa: E402

#: the make_pipeline, slurm_cluster, postgres and pg_catalog fixtures for every test package
pytest_plugins = ["tests.support.pipeline", "tests.support.slurm", "tests.support.postgres", "tests.support.queue_server"]

# The suite writes about 2.5 GB (raw FCCD frames in the session catalog, CXI files); on a
# fuller disk SQLite fails mid-run with "database or disk is full", far from the cause.
NEEDED_FREE_BYTES = 4 * 2**30


def pytest_sessionstart(session):
    import shutil
    import signal

    # A suite started in the background by a non-interactive shell (nohup, `make test &`, some CI runners) inherits
    # SIGINT ignored, and so would every command it starts: the Ctrl-C tests would send SIGINT to processes that
    # cannot hear it. Ctrl-C means what it means in a terminal, for this process and its children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    base = session.config._tmp_path_factory.getbasetemp()
    free = shutil.disk_usage(base).free
    if free < NEEDED_FREE_BYTES:
        pytest.exit(f"only {free / 2**30:.1f} GiB free under {base}; the test suite writes about 2.5 GiB of "
                    f"detector frames and catalog data and needs {NEEDED_FREE_BYTES / 2**30:.0f} GiB", returncode=1)


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture(scope="module", autouse=True)
def _module_catalogs_closed(catalog_dir):
    """Stop, after each test module, the embedded catalog servers it started (not the session's own).

    An embedded server otherwise runs until pytest exits: a suite's worth of idle servers took enough
    CPU from the timing-sensitive tests that ran late (EPICS, the live screens) to fail them.
    """
    yield
    shared = catalog_dir.resolve()
    for directory in started_catalogs():
        if directory != shared:
            close_catalogs(directory)


@pytest.fixture(scope="session")
def cat(catalog_dir):
    return open_catalog(catalog_dir)


@pytest.fixture(scope="session")
def processed(cat):
    """The derived runs' node beside ``cat`` (the raw runs)."""
    from ns_bluesky.io.catalog_layout import processed_of

    return processed_of(cat)


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
    from ns_bluesky.io.catalog import last_scan_id
    from ns_bluesky.ophyd_devices import make_sim_beamline
    from ns_bluesky.plans import dark_frames, ptycho_scan

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


@pytest.fixture(scope="session")
def sim_scan():
    return SimScan()
