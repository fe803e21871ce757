"""``pipeline_status``: modules, workers, queues, rates and errors, with the buttons that act on them.

The buttons write ``nsstream://control/...`` channels; the plugin sends the command
on the control port and ``control/reply`` says what it did, while the table shows the
effect (workers drained or started, queues emptied, counters at zero). Stop, abort and
reset ask before they act. Below them the queue panel (:mod:`.queue_panel`) queues and runs scans on
the beamline's queue server.
"""

from __future__ import annotations

from pydm import Display
from pydm.widgets import PyDMLabel, PyDMSpinbox
from qtpy.QtWidgets import QLabel

from ns_bluesky.pydm_screens.hub import hub
from ns_bluesky.pydm_screens.queue_panel import QueuePanel

#: columns of the module table: caption, status field
COLUMNS = (
    ("workers", "workers"), ("wanted", "wanted_workers"), ("items/s", "rate"), ("queue", "queue"), ("held", "held"),
    ("in flight", "in_flight"), ("received", "received"), ("processed", "processed"), ("re-dispatched", "redispatched"),
    ("duplicates", "duplicates"), ("errors", "errors"), ("aborted", "aborted"),
)


class PipelineStatus(Display):
    def __init__(self, parent=None, args=None, macros=None):
        super().__init__(parent=parent, args=args, macros=macros, ui_filename="pipeline_status.ui")
        grid = self.ui.modules_box.layout()
        for col, caption in enumerate(["module", *(c for c, _ in COLUMNS), "scale to"]):
            grid.addWidget(QLabel(f"<b>{caption}</b>", self), 0, col)
        self.scale: dict[str, PyDMSpinbox] = {}
        for row, spec in enumerate(hub().cfg.modules, start=1):
            grid.addWidget(QLabel(f"{spec.name} ({spec.module})", self), row, 0)
            for col, (_, field) in enumerate(COLUMNS, start=1):
                label = PyDMLabel(self, init_channel=f"nsstream://status/{spec.name}/{field}")
                label.setObjectName(f"{spec.name}_{field}")
                grid.addWidget(label, row, col)
            spin = PyDMSpinbox(self, init_channel=f"nsstream://control/scale/{spec.name}")
            spin.setObjectName(f"{spec.name}_scale")
            spin.precision, spin.precisionFromPV, spin.showStepExponent = 0, False, False
            spin.userDefinedLimits, spin.userMinimum, spin.userMaximum = True, 0, 64
            spin.setToolTip(f"workers for {spec.name}: type a number and press Enter")
            grid.addWidget(spin, row, len(COLUMNS) + 1)
            self.scale[spec.name] = spin
        self.queue_panel = QueuePanel(self)
        self.layout().addWidget(self.queue_panel)
