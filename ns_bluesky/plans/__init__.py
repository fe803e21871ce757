"""Bluesky plans for ptychography, and the stubs they are built from (:mod:`.stubs`)."""

from .adaptive import adaptive_ptycho
from .decision_log import DecisionLog
from .feedback import Feedback
from .scans import dark_frames, ptycho_scan
from .stubs import ptycho_metadata, scan_positions

__all__ = ["DecisionLog", "Feedback", "adaptive_ptycho", "dark_frames", "ptycho_metadata", "ptycho_scan", "scan_positions"]
