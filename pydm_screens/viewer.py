"""``viewer``: a CXI file or a catalog run (raw or derived) with histograms, colour limits and positions.

Historical data, not live: it reads through :mod:`~ns_bluesky.pydm_screens.sources`
(``h5py`` or the catalog) and shows each image in a pyqtgraph ``ImageView`` (histogram
and colour limits to drag), the error curve, and the scan positions drawn over the
image they belong to (the STXM map, or the object for a CXI reconstruction).
Arguments: ``[SOURCE] [--catalog DIR]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyqtgraph as pg
from ns_bluesky.pydm_screens.sources import ViewData, open_source
from pydm import Display
from qtpy.QtWidgets import QFileDialog


class Viewer(Display):
    def __init__(self, parent=None, args=None, macros=None):
        super().__init__(parent=parent, args=args, macros=macros, ui_filename="viewer.ui")
        opts = argparse.ArgumentParser(prog="ns-bluesky gui viewer")
        opts.add_argument("source", nargs="?")
        opts.add_argument("--catalog")
        self.opts = opts.parse_args(args or [])
        self.data: ViewData | None = None
        self.positions = pg.ScatterPlotItem(size=6, pen=pg.mkPen("r"), brush=None)
        self.ui.image.getView().addItem(self.positions)
        self.ui.image.getView().invertY(True)
        self.ui.open_button.clicked.connect(lambda: self.open(self.ui.source.text().strip()))
        self.ui.source.returnPressed.connect(lambda: self.open(self.ui.source.text().strip()))
        self.ui.browse_button.clicked.connect(self._browse)
        self.ui.image_choice.currentTextChanged.connect(self.show_image)
        self.ui.error_curve.setLabel("left", "data residual")
        self.ui.error_curve.setLabel("bottom", "iteration / update")
        self.ui.error_curve.setLogMode(y=True)
        if self.opts.source:
            self.ui.source.setText(self.opts.source)
            self.open(self.opts.source)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a CXI file", "", "CXI files (*.cxi *.h5)")
        if path:
            self.ui.source.setText(path)
            self.open(path)

    def open(self, source: str) -> None:
        """Show ``source``; a bad one is said on the screen, the last good view stays."""
        if not source:
            return
        try:
            data = open_source(source, self.opts.catalog)
        except Exception as exc:
            self.ui.title.setText(f"<span style='color:red'>cannot open {source!r}: {exc}</span>")
            return
        self.data = data
        self.ui.title.setText(data.title)
        self.ui.notes.setText("\n".join(data.notes))
        self.ui.image_choice.blockSignals(True)
        self.ui.image_choice.clear()
        self.ui.image_choice.addItems(list(data.images))
        self.ui.image_choice.blockSignals(False)
        self.show_image(next(iter(data.images)))
        self.ui.error_curve.clear()
        if data.residuals.size:
            self.ui.error_curve.plot(np.arange(1, data.residuals.size + 1), np.maximum(data.residuals, 1e-12), pen=pg.mkPen("#ffaa00", width=2))

    def show_image(self, name: str) -> None:
        if self.data is None or name not in self.data.images:
            return
        image = self.data.images[name]
        self.ui.image.setImage(image.T, autoLevels=True)  # pyqtgraph's default axis order is (x, y)
        if self.data.positions_px is not None and name == self.data.positions_on:
            self.positions.setData(x=self.data.positions_px[:, 1] + 0.5, y=self.data.positions_px[:, 0] + 0.5)
        else:
            self.positions.setData(x=[], y=[])
