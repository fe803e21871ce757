"""Reconstruction engines with PtyPy's shape (prepare / iterate / finalize) and pty-chi's
separation of data (:class:`PtychoData`), parameters (pydantic, per engine) and engine.

- ``lsqml``: least-squares maximum likelihood (Odstrčil et al., Opt. Express 26, 3108,
  2018): mini-batches, object and probe update directions preconditioned by their
  illumination, and per-frame optimal step sizes from a 2 x 2 least-squares problem; the
  Poisson likelihood, incoherent probe modes (a second one kept where the data asks for it)
  and position refinement by default. The default: fastest to a low error.
- ``epie`` / ``rpie``: frame-by-frame updates (Maiden & Rodenburg 2009; Maiden et al. 2017).
- ``dm``: difference map (Thibault et al. 2009) and ``raar``: relaxed averaged alternating
  reflections (Luke 2005; β = 0.6 as SHARP), both on all exit waves at once, with the
  object and probe solved jointly in the overlap projection.

Every frame carries a weight: 0 until it has arrived (SHARP's streaming trick), so an
engine iterates on "all frames so far" and frames join while it runs
(:meth:`Engine.add_frames`). Positions are sub-pixel: the probe is shifted by the
fractional part with a Fourier phase ramp, never rounded. Every iteration records the
Fourier-space data residual ``sum (|F psi| - sqrt(I))^2 / sum I`` over the frames
that count: the cost the engines minimise, normalised as PtyPy's Fourier-magnitude
error ``err_fmag`` (a squared quantity; its square root is the relative RMS misfit).
One code path for numpy and cupy: arrays live in ``self.xp``, and what the two do differently
(scatter-adds, windows, in-place FFTs, threads) in the array namespace ``self.arrays`` (:mod:`..backend`).

The package: :mod:`.data` (:class:`PtychoData`), :mod:`.base` (:class:`Engine`, :class:`EngineParams`, the
registry), one module an engine family with its options next to it: :mod:`.lsqml`, :mod:`.rpie`,
:mod:`.projection` (DM, RAAR); over MPI ranks, :mod:`.split` (SHARP's partition) and :mod:`.comm` (what an
engine asks of the other ranks).
"""

from .base import _ENGINES, Engine, EngineParams, empty_slots, engine, engine_names, register  # noqa: F401  (_ENGINES: benchmarks)
from .comm import Communicator, SerialComm
from .data import PtychoData
from .lsqml import LSQML, LSQMLParams
from .projection import DM, RAAR, DMParams, ProjectionParams, RAARParams
from .rpie import EPIE, RPIE, EPIEParams, RPIEParams
from .split import Share, gather_object, gather_origins, partition, prepare_split

__all__ = ["empty_slots", "DM", "EPIE", "LSQML", "RAAR", "RPIE", "Communicator", "DMParams", "SerialComm", "Share", "gather_object",
           "gather_origins", "partition", "prepare_split", "EPIEParams", "Engine", "EngineParams", "LSQMLParams",
           "ProjectionParams", "PtychoData", "RAARParams", "RPIEParams", "engine", "engine_names", "register"]
