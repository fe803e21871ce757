"""Plans: darks and ptychography scans, with a one-screen reminder (``plans_help()``)."""

from ns_bluesky.plans import dark_frames, ptycho_scan, scan_positions  # noqa: F401

_HELP = """\
  (dark,) = RE(dark_frames(fccd, shutter, 20))
  (uid,) = RE(ptycho_scan(fccd, stage, shutter, shape=(10, 10), overlap=0.7, optics=optics, dark_uid=dark))
  pipeline.finish(uid, 120)                 # the live reconstruction's end; its derived run is then in cat
  cat[uid]["primary"]["fccd_image"]         # the raw frames, lazily
  from tiled.queries import Key; cat.search(Key("parent_uid") == uid)   # the derived run(s)
"""


def plans_help() -> None:
    """Print how to take darks, scan, and find the results."""
    print(_HELP)


print(f"[30-plans] dark_frames, ptycho_scan, scan_positions; plans_help() for examples "
      f"(loaded in {_time.monotonic() - _t0:.1f} s)")  # noqa: F821
