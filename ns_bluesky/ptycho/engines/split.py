"""One reconstruction over several ranks, SHARP's way (Marchesini et al., J. Appl. Cryst. 49, 2016).

The frames are partitioned by position into contiguous regions (recursive bisection along the longer
extent, as many frames to each rank), and each rank holds only the part of the object grid its frames
touch (their windows' bounding box and a margin of :data:`MARGIN_PX` for positions to move into). The
engine itself is unchanged: it iterates on its rank's frames and part of the grid, and its reductions
(:meth:`.base.Engine._reduce`) sum the object- and probe-sized numerators and illuminations of every rank
each mini-batch (LSQ-ML) or overlap projection (DM, RAAR) through a :class:`.comm.Communicator`, each
each rank adding its neighbours' sums where their parts overlap. Positions are refined locally (only the common shift
is reduced). Rank 0 gathers the parts at the end (:func:`gather_object`).

Object-sized sums travel only where two parts overlap, between those two ranks (non-blocking sends and
receives, :meth:`.comm.Communicator.exchange`): the volume grows with the boundaries between regions, not
with the object. Probe-sized sums, counts and the illumination's maximum go in one small allreduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError
from ..backend import asnumpy
from .base import Engine
from .comm import Communicator
from .data import PtychoData

#: pixels around a rank's windows that its part of the object grid also holds: positions refine into them
MARGIN_PX = 4


def partition(origins_px: np.ndarray, parts: int) -> list[np.ndarray]:
    """Frame indices for each of ``parts`` ranks, sorted: contiguous regions of about equal counts, by
    recursive bisection of the positions along their longer extent (strips for 2 or 3, tiles beyond)."""
    origins = np.asarray(origins_px, float)
    if parts < 1 or parts > len(origins):
        raise ParameterError(f"cannot split {len(origins)} frames over {parts} ranks")

    def split(idx: np.ndarray, k: int) -> list[np.ndarray]:
        if k == 1:
            return [np.sort(idx)]
        pts = origins[idx]
        axis = int(np.ptp(pts[:, 1]) > np.ptp(pts[:, 0]))  # rows first, columns where they spread further
        order = idx[np.lexsort((pts[:, 1 - axis], pts[:, axis]))]
        k1 = k // 2
        cut = int(round(len(idx) * k1 / k))
        return split(order[:cut], k1) + split(order[cut:], k - k1)

    return split(np.arange(len(origins)), parts)


@dataclass
class Share:
    """This rank's part: its frames (indices into the whole set), and its part of the object grid, at
    ``offset`` (row, col) on the whole grid of ``whole_shape``."""

    frames: np.ndarray
    offset: np.ndarray
    shape: tuple[int, int]
    whole_shape: tuple[int, int]


def prepare_split(eng: Engine, data: PtychoData, probe: np.ndarray, comm: Communicator, obj: np.ndarray | None = None) -> Share:
    """``eng.prepare`` on this rank's share of ``data``; with one rank, on all of it (the plain engine)."""
    origins = np.asarray(data.origins_px, np.float64)
    n = np.shape(data.patterns)[-1]
    whole = obj.shape if obj is not None else tuple(int(np.ceil(v)) + n + 1 for v in origins.max(axis=0))
    if comm.size == 1:
        eng.prepare(data, probe, obj)
        return Share(np.arange(len(origins)), np.zeros(2, np.int64), tuple(eng.obj.shape), tuple(eng.obj.shape))
    parts = partition(origins, comm.size)  # every rank computes every part: each knows its neighbours' regions
    regions = [_region(origins[p], n, whole) for p in parts]
    frames, (lo, hi) = parts[comm.rank], regions[comm.rank]
    mine = origins[frames]
    start = obj if obj is not None else np.ones(whole, np.complex64)
    eng.comm, eng.offset, eng.global_shape = comm, lo, whole
    eng.neighbours = neighbours(regions, comm.rank)
    weights = None if data.weights is None else np.asarray(data.weights)[frames]
    local = PtychoData(np.asarray(data.patterns)[frames], mine - lo, weights)
    eng.prepare(local, probe, np.array(start[lo[0] : hi[0], lo[1] : hi[1]]))
    return Share(frames, lo, (int(hi[0] - lo[0]), int(hi[1] - lo[1])), tuple(whole))


def _region(origins: np.ndarray, n: int, whole) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners on the whole grid of the part that frames at ``origins`` touch, with the margin."""
    lo = np.maximum(np.floor(origins.min(axis=0)).astype(np.int64) - MARGIN_PX, 0)
    hi = np.minimum(np.ceil(origins.max(axis=0)).astype(np.int64) + n + 1 + MARGIN_PX, np.array(whole))
    return lo, hi


def neighbours(regions: list[tuple[np.ndarray, np.ndarray]], rank: int) -> dict[int, tuple[slice, slice]]:
    """For each other rank whose part overlaps ``rank``'s, the overlap as slices of ``rank``'s part."""
    lo, hi = regions[rank]
    out = {}
    for r, (lo_r, hi_r) in enumerate(regions):
        a, b = np.maximum(lo, lo_r), np.minimum(hi, hi_r)
        if r != rank and (b > a).all():
            out[r] = (slice(int(a[0] - lo[0]), int(b[0] - lo[0])), slice(int(a[1] - lo[1]), int(b[1] - lo[1])))
    return out


def gather_object(eng: Engine, share: Share, comm: Communicator, start: np.ndarray | None = None) -> np.ndarray | None:
    """The whole object at rank 0 (None elsewhere): every rank's part placed at its offset (the parts agree
    where they overlap: every update there was reduced), ``start`` (ones by default) where no frame reached."""
    local = np.ascontiguousarray(asnumpy(eng.obj))
    if comm.size == 1:
        return local
    parts = comm.gather(local)
    offsets = comm.gather(np.ascontiguousarray(share.offset, np.int64))
    if comm.rank != 0:
        return None
    whole = np.array(start, np.complex64) if start is not None else np.ones(share.whole_shape, np.complex64)
    for part, (r, c) in zip(parts, offsets, strict=True):
        whole[r : r + part.shape[0], c : c + part.shape[1]] = part
    return whole


def gather_origins(eng: Engine, share: Share, comm: Communicator, count: int) -> np.ndarray | None:
    """Every frame's (refined) probe-window origin on the whole grid, at rank 0 (None elsewhere)."""
    mine = np.ascontiguousarray(np.column_stack([share.frames, eng.origins + share.offset]), np.float64)
    rows = comm.gather(mine)
    if comm.rank != 0:
        return None
    out = np.full((count, 2), np.nan)
    for r in rows:
        out[r[:, 0].astype(np.int64)] = r[:, 1:]
    return out
