"""What an engine needs from its fellow ranks, as a small interface: the engines stay pure numerics and
never import mpi4py. :class:`SerialComm` is the one rank of a plain run; an MPI communicator
(:mod:`ns_bluesky.stream.mpi`) fills the same :class:`Communicator` protocol over mpi4py.

Only arrays travel (buffers, never pickles): reductions in place on host arrays, a broadcast from the
root, a gather of arrays of any shape to the root and exchanges with neighbouring ranks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Communicator(Protocol):
    """The ranks of one reconstruction: ``rank`` in ``range(size)``; every rank calls each method in the
    same order (collectives)."""

    rank: int
    size: int

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        """``buf`` (a contiguous host array) becomes its sum (``op="sum"``) or maximum (``"max"``) over the ranks."""

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        """``buf`` (contiguous, same shape and dtype on every rank) becomes the root's."""

    def gather(self, a: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Every rank's array (any shape, one dtype) at the root, in rank order; None elsewhere."""

    def exchange(self, sends: dict[int, np.ndarray], recvs: dict[int, np.ndarray]) -> None:
        """Point to point with some ranks at once: ``sends[r]`` goes to rank r and ``recvs[r]`` is filled from
        it (both sides name each other; no order to keep, no deadlock)."""

    def abort(self, code: int = 1) -> None:
        """End every rank now (after an error on one: the others would wait in a collective for ever)."""


class SerialComm:
    """One rank: every collective is the identity."""

    rank = 0
    size = 1

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        if op not in ("sum", "max"):
            raise ValueError(f"unknown reduction {op!r}")

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        pass

    def gather(self, a: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        return [a]

    def exchange(self, sends: dict[int, np.ndarray], recvs: dict[int, np.ndarray]) -> None:
        if sends or recvs:
            raise ValueError("one rank has no one to exchange with")

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)
