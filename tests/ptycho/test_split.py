"""SHARP's partition and the one-rank path of a split engine (the ranks themselves: tests/stream/test_mpi.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ns_bluesky.errors import ParameterError
from ns_bluesky.ptycho.engines import SerialComm, engine, gather_object, partition, prepare_split
from tests.support.ptycho_set import small_set


def test_frames_are_split_into_contiguous_regions_of_equal_counts():
    origins = np.array([(6 * i, 6 * j) for i in range(8) for j in range(8)], float)
    two = partition(origins, 2)
    assert [len(p) for p in two] == [32, 32]
    assert origins[two[0], 0].max() < origins[two[1], 0].min()  # strips: rows 0-3, then 4-7
    four = partition(origins, 4)
    assert [len(p) for p in four] == [16] * 4
    boxes = [(origins[p].min(axis=0), origins[p].max(axis=0)) for p in four]
    assert all(np.ptp(origins[p], axis=0).max() == 18 for p in four)  # 4 x 4 tiles, not 16 x 1 strips
    assert len({tuple(lo) for lo, _ in boxes}) == 4
    assert sorted(np.concatenate(four).tolist()) == list(range(64))
    three = partition(origins, 3)
    assert sorted(len(p) for p in three) == [21, 21, 22]


def test_more_ranks_than_frames_is_refused():
    with pytest.raises(ParameterError, match="cannot split 2 frames over 3 ranks"):
        partition(np.zeros((2, 2)), 3)


def test_one_rank_is_the_plain_engine():
    data, _, probe, _ = small_set()
    plain = engine("raar", threads=1)
    plain.prepare(data, probe)
    plain.iterate(3)
    split = engine("raar", threads=1)
    share = prepare_split(split, data, probe, SerialComm())
    split.iterate(3)
    assert len(share.frames) == 64 and share.shape == share.whole_shape == plain.obj.shape
    assert np.array_equal(gather_object(split, share, SerialComm()), plain.obj)
