"""The FCCD's geometry: the raw readout layout a frame grabber hands over, assembly, the beamstop.

Layout (``shared/reference/fccd-cosmic.md``): the 1040 x 1152 uint16 raw frame is the
readout buffer in ADC clock order. Seen as ``(rows_per_half, 12, 192)`` it is
``[row, column-within-supercolumn, channel]``: at every clock tick all 192 channels
deliver one sample; each channel reads its 12 columns (10 data, 2 overscan) row by row.
Channels 0-95 read the top half, 96-191 the bottom half. Readout row 0 of both halves
lies next to the central gap; the top half is rotated by 180 degrees when assembled.
Of each half's 520 rows, the 35 next to the middle form half of the 70-row gap and the
last 5 (outer edge) carry no image, leaving 2 x 480 image rows: a 960 x 960 image.

Everything here works on any leading batch dimensions: ``(..., 1040, 1152)``.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from .model import Model


class DetectorGeometry(Model):
    """The FCCD as COSMIC runs it: raw readout layout, pixel pitch and beamstop."""

    distance_m: float = Field(0.07955, gt=0, description="sample to detector distance")
    pixel_size_m: float = Field(30e-6, gt=0, description="physical pixel pitch (square)")
    rows_per_half: int = Field(520, gt=0, description="rows read out per sensor half")
    channels: int = Field(192, gt=0, description="ADC channels (supercolumns), both halves")
    data_cols_per_channel: int = Field(10, gt=0)
    overscan_cols_per_channel: int = Field(2, ge=1)
    gap_rows: int = Field(70, ge=0, description="rows removed around the middle (half each side)")
    image_rows_per_half: int = Field(480, gt=0)
    adc_bits: int = Field(13, ge=8, le=16, description="ADC value bits; saturation at 2**bits - 1")
    adu_per_eV: float = Field(
        0.0185, gt=0, description="gain: ADU per eV deposited (x8 stage: about 15 ADU per 800 eV photon)"
    )
    beamstop_radius_m: float = Field(1.83e-3, ge=0)
    beamstop_transmission: float = Field(0.015, gt=0, le=1)

    @property
    def cols_per_channel(self) -> int:
        return self.data_cols_per_channel + self.overscan_cols_per_channel

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Raw frame as streamed: 1040 x 1152 for the COSMIC FCCD."""
        total = self.rows_per_half * self.channels * self.cols_per_channel
        rows = 2 * self.rows_per_half
        return rows, total // rows

    @property
    def image_shape(self) -> tuple[int, int]:
        """Assembled image: 960 x 960 for the COSMIC FCCD."""
        return 2 * self.image_rows_per_half, self.channels // 2 * self.data_cols_per_channel

    @property
    def saturation_adu(self) -> int:
        return 2**self.adc_bits - 1

    @model_validator(mode="after")
    def _check_layout(self) -> DetectorGeometry:
        if self.channels % 2:
            raise ValueError(f"channels must be even (two sensor halves), got {self.channels}")
        edge = self.rows_per_half - self.gap_rows // 2 - self.image_rows_per_half
        if edge < 0:
            raise ValueError(
                f"image_rows_per_half={self.image_rows_per_half} + gap_rows/2={self.gap_rows // 2} "
                f"exceed rows_per_half={self.rows_per_half}"
            )
        return self

    @property
    def edge_rows(self) -> int:
        """Rows at the outer edge of each half that carry no image (readout settling)."""
        return self.rows_per_half - self.gap_rows // 2 - self.image_rows_per_half


def blocks(raw: np.ndarray, geom: DetectorGeometry) -> np.ndarray:
    """View a raw frame as ``[..., half, row, supercolumn, column]`` (no copy of the data)."""
    lead = raw.shape[:-2]
    r, j, s = geom.rows_per_half, geom.cols_per_channel, geom.channels // 2
    if raw.shape[-2:] != geom.raw_shape:
        raise ValueError(f"raw frame must have shape {geom.raw_shape}, got {raw.shape[-2:]}")
    v = raw.reshape(*lead, r, j, 2, s)
    n = len(lead)
    return v.transpose(*range(n), n + 2, n, n + 3, n + 1)


def from_blocks(b: np.ndarray, geom: DetectorGeometry) -> np.ndarray:
    """Inverse of :func:`blocks`: ``[..., half, row, supercolumn, column]`` to a raw frame."""
    n = b.ndim - 4
    v = b.transpose(*range(n), n + 1, n + 3, n, n + 2)
    return np.ascontiguousarray(v).reshape(*b.shape[:n], *geom.raw_shape)


def overscan(raw: np.ndarray, geom: DetectorGeometry) -> np.ndarray:
    """Overscan samples ``[..., channel, row, overscan column]``: the per-channel baseline."""
    b = blocks(raw, geom)[..., geom.data_cols_per_channel :]
    lead = b.shape[:-4]
    moved = np.moveaxis(b, -3, -2)  # [..., half, supercolumn, row, col]
    return moved.reshape(*lead, geom.channels, geom.rows_per_half, geom.overscan_cols_per_channel)


def channel_series(raw: np.ndarray, geom: DetectorGeometry) -> np.ndarray:
    """Every channel as one time series in readout-clock order: ``[..., channel, clock]``."""
    lead = raw.shape[:-2]
    v = raw.reshape(*lead, geom.rows_per_half * geom.cols_per_channel, geom.channels)
    return np.swapaxes(v, -1, -2)


def _halves(geom: DetectorGeometry) -> slice:
    g = geom.gap_rows // 2
    return slice(g, g + geom.image_rows_per_half)


def assemble(raw: np.ndarray, geom: DetectorGeometry) -> np.ndarray:
    """Raw readout to the 960 x 960 image: drop overscan, gap and edge rows, rotate the top half."""
    b = blocks(raw, geom)[..., : geom.data_cols_per_channel]
    lead = b.shape[:-4]
    data = b.reshape(*lead, 2, geom.rows_per_half, -1)[..., _halves(geom), :]
    top = data[..., 0, ::-1, ::-1]
    bottom = data[..., 1, :, :]
    return np.concatenate([top, bottom], axis=-2)


def disassemble(image: np.ndarray, geom: DetectorGeometry, fill: float = 0, dtype=None) -> np.ndarray:
    """Image to raw readout order; overscan, gap and edge samples get ``fill``."""
    lead = image.shape[:-2]
    dtype = dtype or image.dtype
    n_img = geom.image_rows_per_half
    r, s, d = geom.rows_per_half, geom.channels // 2, geom.data_cols_per_channel
    b = np.full((*lead, 2, r, s, geom.cols_per_channel), fill, dtype=dtype)
    rows = _halves(geom)
    top = image[..., :n_img, :][..., ::-1, ::-1]
    bottom = image[..., n_img:, :]
    b[..., 0, rows, :, :d] = top.reshape(*lead, n_img, s, d)
    b[..., 1, rows, :, :d] = bottom.reshape(*lead, n_img, s, d)
    return from_blocks(b, geom)


def add_image(raw: np.ndarray, image: np.ndarray, geom: DetectorGeometry) -> None:
    """Add an assembled image into a raw frame's data samples, in place (the inverse of :func:`assemble`)."""
    n_img, s, d = geom.image_rows_per_half, geom.channels // 2, geom.data_cols_per_channel
    b = blocks(raw, geom)
    rows = _halves(geom)
    b[0, rows, :, :d] += image[:n_img][::-1, ::-1].reshape(n_img, s, d)
    b[1, rows, :, :d] += image[n_img:].reshape(n_img, s, d)


def beamstop_transmission(geom: DetectorGeometry, center=None) -> np.ndarray:
    """The beamstop's transmission on the assembled image: a disc of ``beamstop_radius_m`` (1 outside)."""
    n_y, n_x = geom.image_shape
    cy, cx = (n_y // 2, n_x // 2) if center is None else center
    yy, xx = np.ogrid[:n_y, :n_x]
    r = np.hypot(yy - cy, xx - cx)
    return np.where(r <= geom.beamstop_radius_m / geom.pixel_size_m, geom.beamstop_transmission, 1.0).astype(np.float32)
