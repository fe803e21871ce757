"""Plans: darks and ptychography scans, with a one-screen reminder (``plans_help()``).

The session lends the plans its ``optics`` and remembers its dark runs
(:func:`ns_bluesky.plans.use_session_defaults`): a scan that leaves ``optics`` and
``dark_uid`` out takes the beamline's optics and the latest dark at the detector's
exposure, recorded in its start document as if passed; ``adaptive_ptycho`` without
``feedback`` takes the pipeline's (so the queue server can run it too).
"""

from ns_bluesky.callbacks.feedback import AdaptiveFeedback

from ns_bluesky.plans import dark_frames, ptycho_scan, scan_positions, session_defaults, use_session_defaults  # noqa: F401
from ns_bluesky.plans.adaptive import adaptive_ptycho  # noqa: F401

feedback = AdaptiveFeedback(pipeline_cfg)  # noqa: F821  what adaptive_ptycho reads from the pipeline
at_exit(feedback.close)  # noqa: F821
use_session_defaults(optics=optics, feedback=feedback)  # noqa: F821  (10-devices)

_HELP = """\
  (dark,) = RE(dark_frames(fccd, shutter, 20))            # later scans at this exposure use it
  (uid,) = RE(ptycho_scan(fccd, stage, shutter, shape=(10, 10)))   # the beamline's optics and the last dark
  (uid,) = RE(ptycho_scan(fccd, stage, shutter, shape=(10, 10), overlap=0.5, optics=optics, dark_uid=dark))  # or given
  (uid,) = RE(adaptive_ptycho(fccd, stage, shutter, feedback=feedback, shape=(20, 20), overlap=0.7))
                                            # coarse pass, region of interest, bad frames, drift
  catalog_writer.flush(); cat[uid]["adaptive"].read()   # what it decided: adaptive_action, _reason, _positions
  pipeline.finish(uid, 120)                 # the live reconstruction's end; its derived run is then in processed
  cat[-1], cat[scan_id], cat[uid]           # raw runs only (scans, darks)
  cat[uid]["primary"]["fccd_image"]         # the raw frames, lazily
  derived(uid)[-1]["reconstruction"]        # its latest derived run (in processed); parent(run) goes back
"""


def plans_help() -> None:
    """Print how to take darks, scan, and find the results."""
    print(_HELP)


print(f"[30-plans] dark_frames, ptycho_scan, adaptive_ptycho (feedback), scan_positions (optics and the last dark "
      f"lent by the session); plans_help() for examples "
      f"(loaded in {_time.monotonic() - _t0:.1f} s)")  # noqa: F821
