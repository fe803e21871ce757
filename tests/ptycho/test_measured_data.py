"""Measured data: the APS Velociprobe Siemens star from tike (tests/data/PROVENANCE.md).

No ground truth: the residual must fall and the star's spokes must show in the phase.
"""

import bz2
import io
from pathlib import Path

import numpy as np
import pytest

from ns_bluesky.ptycho.engines import PtychoData, engine

DATA = Path(__file__).parents[1] / "data" / "siemens-star-small.npz.bz2"


@pytest.fixture(scope="module")
def star():
    d = np.load(io.BytesIO(bz2.decompress(DATA.read_bytes())))
    patterns = np.fft.fftshift(d["data"][0], axes=(-2, -1)).astype(np.float32)  # stored in FFT order
    scan = d["scan"][0].astype(float)  # probe positions in object pixels (row, col)
    probe = d["probe"][0, 0, 0, 0].astype(np.complex64)
    probe *= np.sqrt(patterns.sum(axis=(-2, -1)).mean() / (np.abs(probe) ** 2).sum())  # to the measured counts
    return patterns, scan - scan.min(axis=0) + 2, probe


def test_lsqml_reconstructs_the_measured_star(star):
    patterns, origins, probe = star
    eng = engine("lsqml")
    eng.prepare(PtychoData(patterns, origins), probe)
    res = eng.iterate(25)
    obj = eng.finalize()[0]
    # measured here: 0.20 -> 0.0098 in 25 iterations (relative squared misfit; Poisson noise floor about 0.009). The
    # default start (auto) keeps the given probe's far field (it holds 0.73 of the mean pattern's counts) and adds
    # the defocus its trials fit best: -17 rad, residual 0.0132 against 0.0200 as given in the longer trial
    assert eng.start_choice.summary().startswith("start probe: as given"), eng.start_choice.summary()
    assert res[-1] < res[0] / 10
    phase = np.angle(obj * np.exp(-1j * np.angle(obj[tuple(np.round(origins.mean(axis=0)).astype(int))])))
    theta = np.linspace(0, 2 * np.pi, 1024, endpoint=False)

    def spokes(centre, radius):
        rows = np.round(centre[0] + radius * np.sin(theta)).astype(int)
        cols = np.round(centre[1] + radius * np.cos(theta)).astype(int)
        profile = phase[rows, cols]
        s = np.abs(np.fft.rfft(profile - profile.mean()))
        k = int(np.argmax(s[1:]) + 1)
        return k, s[k] / np.median(s[1:])

    # the star's centre: where the angular periodicity is strongest, near the middle of the scan
    middle = origins.mean(axis=0) + patterns.shape[-1] / 2
    grid = [middle + (dy, dx) for dy in range(-30, 31, 3) for dx in range(-30, 31, 3)]
    centre = max(grid, key=lambda c: spokes(c, 120)[1])
    for radius in (80, 120, 160):
        k, contrast = spokes(centre, radius)
        assert 28 <= k <= 33, (radius, k)  # the same ~30 spokes at every radius
        assert contrast > 40
