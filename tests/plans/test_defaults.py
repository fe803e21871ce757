"""A session's defaults on a real RunEngine: the optics and the latest dark lent to scans that leave them
out, recorded as if passed; arguments win; a script without a session still has to pass them."""

import pytest

from ns_bluesky.errors import ParameterError
from ns_bluesky.plans import clear_session_defaults, dark_frames, ptycho_scan, use_session_defaults


@pytest.fixture
def session(RE):
    starts = {}
    RE.subscribe(lambda name, doc: starts.__setitem__(doc["uid"], doc) if name == "start" else None)
    yield starts
    clear_session_defaults()  # the defaults are the process's: leave none to the next test


def test_a_session_scan_takes_the_beamlines_optics_and_its_latest_dark(RE, beamline, session):
    bl = beamline
    (explicit_dark,) = RE(dark_frames(bl.fccd, bl.shutter, 2))  # before the session: not remembered
    (explicit,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(2, 2), optics=bl.optics, dark_uid=explicit_dark))
    use_session_defaults(optics=bl.optics)
    (none_yet,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(2, 2)))
    (dark,) = RE(dark_frames(bl.fccd, bl.shutter, 2))
    (short,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(2, 2)))

    a, b = session[explicit], session[short]
    for key in ("energy_eV", "energy_J", "wavelength_m", "probe_optics", "object_pixel_size_m", "scan", "planned_positions_m"):
        assert a[key] == b[key], key  # recorded as if passed
    assert a["plan_name"] == b["plan_name"] == "ptycho_scan" and b["dark_uid"] == dark
    assert "session_defaults" not in a
    assert b["session_defaults"] == {"optics": "session: optics", "dark_uid": "session: the latest dark run of fccd"}
    assert session[none_yet]["dark_uid"] is None
    assert session[none_yet]["session_defaults"]["dark_uid"].startswith("none: the session has taken no dark run")

    (given,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(2, 2), dark_uid=explicit_dark))  # arguments win
    assert session[given]["dark_uid"] == explicit_dark and "dark_uid" not in session[given]["session_defaults"]
    bl.fccd.acquire_time.put(2 * bl.fccd.acquire_time.get())  # a dark holds for the exposure it was taken at
    (longer,) = RE(ptycho_scan(bl.fccd, bl.stage, bl.shutter, shape=(2, 2)))
    assert session[longer]["dark_uid"] is None
    assert f"dark {dark[:8]} was taken at" in session[longer]["session_defaults"]["dark_uid"]


def test_without_a_session_the_optics_must_be_passed(RE, beamline, session):
    (dark,) = RE(dark_frames(beamline.fccd, beamline.shutter, 2))
    with pytest.raises(ParameterError, match="optics is required.*use_session_defaults"):
        RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, shape=(2, 2)))
    (uid,) = RE(ptycho_scan(beamline.fccd, beamline.stage, beamline.shutter, shape=(2, 2), optics=beamline.optics))
    assert session[uid]["dark_uid"] is None and "session_defaults" not in session[uid]  # no dark remembered
