"""A progress bar with the frame rate, fed by the document stream."""

from __future__ import annotations

import sys

from event_model import DocumentRouter
from tqdm import tqdm


class ProgressBar(DocumentRouter):
    """One tqdm bar per run: total from ``num_points`` in the start document, one tick per event."""

    def __init__(self, *, file=None, disable: bool | None = None):
        super().__init__()
        self.file = file or sys.stderr
        self.disable = disable
        self._bar: tqdm | None = None

    def start(self, doc):
        label = doc.get("plan_name", "run")
        self._bar = tqdm(
            total=doc.get("num_points"), desc=f"{label} #{doc.get('scan_id', '?')}", unit="frame",
            file=self.file, disable=self.disable, dynamic_ncols=True, leave=True,
        )

    def event(self, doc):
        if self._bar is not None:
            self._bar.update(1)

    def event_page(self, doc):
        if self._bar is not None:
            self._bar.update(len(doc["seq_num"]))

    def stop(self, doc):
        if self._bar is not None:
            status = doc.get("exit_status", "?")
            if status != "success":
                self._bar.set_postfix_str(f"{status}: {doc.get('reason', '')}")
            self._bar.close()
            self._bar = None
