"""Bluesky plans for ptychography, and the stubs they are built from (:mod:`.stubs`)."""

from .adaptive import adaptive_ptycho
from .decision_log import DecisionLog
from .defaults import clear_session_defaults, session_defaults, use_session_defaults
from .feedback import Feedback
from .scans import dark_frames, ptycho_scan
from .stubs import ptycho_metadata, scan_positions

__all__ = ["DecisionLog", "Feedback", "adaptive_ptycho", "clear_session_defaults", "dark_frames", "ptycho_metadata",
           "ptycho_scan", "scan_positions", "session_defaults", "use_session_defaults"]
