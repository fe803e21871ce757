"""The simulated IOC draws a light frame while the stage is still moving to it, so the drawing is off the scan's path.

A real FCCD spends no CPU on photons: its frame is ready one exposure after the trigger. The simulated one
spends 20-35 ms of CPU drawing it (far field, Poisson counts, the readout's noise), which on two shared
cores ran past the exposure and set the EPICS scan's pace. The stage's targets are known when its VAL is
written, so the frame for that position can be drawn then, in the detector's own worker thread, while the
motors move and the client waits for DMOV and triggers. At the trigger the frame is taken from here only if
it is exactly the one the detector would draw (same simulation, position, frame number and exposure);
anything else (a drift fault, a new optics setting, a different exposure) is drawn as before. What a client
sees is unchanged, bit for bit; only when the drawing happens moves.
"""

from __future__ import annotations

import threading

import numpy as np


class Prerendered:
    """Stands in for the simulation (``PtychoSimulation``) in the detector's source; ``raw_frame`` returns a
    frame drawn ahead by :meth:`draw` when it is the one asked for."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self._lock = threading.Lock()
        self._ahead: tuple[tuple, np.ndarray] | None = None
        self.hits = 0  # frames served from the ones drawn ahead
        self.drawn_ahead = 0

    def __getattr__(self, name):  # everything else is the simulation's
        return getattr(self.sim, name)

    @staticmethod
    def _key(translation_m, frame_index: int, exposure_s: float | None) -> tuple:
        return tuple(float(v) for v in np.asarray(translation_m).ravel()), int(frame_index), exposure_s

    def draw(self, translation_m, frame_index: int, exposure_s: float) -> None:
        """In the detector's worker thread: draw the light frame ``frame_index`` at ``translation_m``."""
        key = self._key(translation_m, frame_index, exposure_s)
        with self._lock:
            if self._ahead is not None and self._ahead[0] == key:
                return
        frame = self.sim.raw_frame(np.asarray(translation_m, dtype=float), frame_index, exposure_s)
        with self._lock:
            self._ahead = (key, frame)
            self.drawn_ahead += 1

    def raw_frame(self, translation_m, frame_index: int, exposure_s: float | None = None) -> np.ndarray:
        if translation_m is not None:
            key = self._key(translation_m, frame_index, exposure_s)
            with self._lock:
                ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[0] == key:
                self.hits += 1
                return ahead[1]
        return self.sim.raw_frame(translation_m, frame_index, exposure_s)
