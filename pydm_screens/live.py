"""``ptycho_live``: the paper's Fig. 3 as a live screen, fed by the ``nsstream://`` plugin.

The layout (images, error curve, log) is ``ptycho_live.ui``; this class adds what
depends on the pipeline: the error curve's channel and one status line per module of
the configuration the screen watches.
"""

from __future__ import annotations

from ns_bluesky.pydm_screens.hub import hub
from pydm import Display
from pydm.widgets import PyDMLabel
from qtpy.QtWidgets import QHBoxLayout, QLabel, QWidget

#: per module: caption, status field
MODULE_FIELDS = (("workers", "workers"), ("items/s", "rate"), ("queue", "queue"), ("held", "held"), ("errors", "errors"))


def module_row(parent: QWidget, module: str, fields=MODULE_FIELDS) -> QWidget:
    """One line of PyDM labels for a module's status."""
    row = QWidget(parent)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(QLabel(f"<b>{module}</b>", row))
    for caption, field in fields:
        lay.addWidget(QLabel(caption, row))
        label = PyDMLabel(row, init_channel=f"nsstream://status/{module}/{field}")
        label.setObjectName(f"{module}_{field}")
        lay.addWidget(label)
    lay.addStretch(1)
    return row


class PtychoLive(Display):
    def __init__(self, parent=None, args=None, macros=None):
        super().__init__(parent=parent, args=args, macros=macros, ui_filename="ptycho_live.ui")
        plot = self.ui.error_curve
        plot.addChannel(y_channel="nsstream://recon/residual/history", name="data residual", color="#ffaa00", lineWidth=2)
        plot.setLabel("left", "residual")
        plot.setLabel("bottom", "update")
        plot.setShowLegend(True)
        for view in (self.ui.recon_phase, self.ui.recon_amplitude, self.ui.stxm, self.ui.probe, self.ui.raw_frame, self.ui.clean_frame):
            view.normalizeData = True  # colour limits follow each image: a phase and a photon count differ by 1e6
        for col in range(3):
            self.ui.grid.setColumnStretch(col, 1)
        layout = self.ui.modules_box.layout()
        for spec in hub().cfg.modules:
            layout.addWidget(module_row(self.ui.modules_box, spec.name))
        layout.addStretch(1)
