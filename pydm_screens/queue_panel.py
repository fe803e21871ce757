"""The queue panel of the status screen: queue a ptychography plan, run, pause, resume, stop or abort the
queue, and see the history with each plan's result and its raw and derived runs.

Why: at NSLS-II scans are queued to the beamline's RE Manager (``ns-bluesky queue start``) from the
screens as well as from the shell. The panel talks to that manager through bluesky-queueserver-api
(:class:`~ns_bluesky.io.queue_client.QueueClient`, ZeroMQ with the CURVE key of the queue directory)
in one worker thread, never in the Qt loop: a manager that does not answer costs the worker a
timeout, never a frozen screen. A manager that does not run is one clear line on the panel.

The parameter form is built from the manager's own description of each plan (``plans_allowed``):
one field per parameter (the profile's devices are filled in), its default as placeholder; an empty
field is not sent. Values are typed as in the shell (``3,3``, ``0.5``, ``fermat``). A plan whose
parameters do not fit is refused by the manager with the reason, shown in the reply line.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime
from pathlib import Path

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ns_bluesky.errors import NSBlueskyError
from ns_bluesky.io.queue_client import (
    PLAN_DEVICES,
    QueueClient,
    default_queue_dir,
    history_rows,
    item_summary,
    parse_value,
)

#: parameters the panel does not offer: the profile's devices (filled in) and the session's objects
HIDDEN = {"det", "stage", "shutter", "feedback", "optics"}
POLL_MS = 1000
HISTORY_COLUMNS = ("finished", "result", "plan", "raw run", "derived run", "message")


class _Bridge(QObject):
    """Carries the worker thread's answers into the Qt loop (queued signal connections)."""

    refreshed = Signal(object)
    replied = Signal(str)


class QueuePanel(QGroupBox):
    """The queue server, as a panel: plan chooser and its parameters, the queue's buttons, queue and history."""

    def __init__(self, parent: QWidget | None = None, queue_dir: str | Path | None = None, timeout_s: float = 5.0):
        super().__init__("Queue server (bluesky-queueserver)", parent)
        self.setObjectName("queue_panel")
        self.queue_dir = Path(queue_dir) if queue_dir is not None else default_queue_dir()
        self.timeout_s = timeout_s
        self.plans: dict[str, dict] = {}  # the manager's plans_allowed, once it answered
        self.fields: dict[str, QLineEdit] = {}
        self.status: dict | None = None
        self.history: list[dict] = []

        self.state_line = QLabel("asking the queue server ...", self)
        self.state_line.setObjectName("queue_state")
        self.state_line.setWordWrap(True)
        self.plan_box = QComboBox(self)
        self.plan_box.setObjectName("queue_plan")
        self.plan_box.addItems(list(PLAN_DEVICES))
        self.plan_box.currentTextChanged.connect(self._build_form)
        self.form = QFormLayout()
        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        for name, caption, tip in (
            ("add", "Add", "queue the plan with these parameters (checked by the manager first)"),
            ("start", "Start", "run the queue: its plans one after the other"),
            ("pause", "Pause", "pause the running plan at its next checkpoint"),
            ("resume", "Resume", "resume the paused plan"),
            ("stop", "Stop", "a paused plan ends cleanly; a running queue stops after its plan"),
            ("abort", "Abort", "end the running or paused plan now, marked aborted"),
        ):
            button = QPushButton(caption, self)
            button.setObjectName(f"queue_{name}")
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, n=name: self._act(n))
            row.addWidget(button)
            self.buttons[name] = button
        self.reply_line = QLabel("", self)
        self.reply_line.setObjectName("queue_reply")
        self.reply_line.setWordWrap(True)
        self.reply_line.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.queue_table = QTableWidget(0, 2, self)
        self.queue_table.setObjectName("queue_items")
        self.queue_table.setHorizontalHeaderLabels(["", "queued plan"])
        self.history_table = QTableWidget(0, len(HISTORY_COLUMNS), self)
        self.history_table.setObjectName("queue_history")
        self.history_table.setHorizontalHeaderLabels(list(HISTORY_COLUMNS))
        for table in (self.queue_table, self.history_table):
            table.verticalHeader().setVisible(False)
            table.setEditTriggers(QTableWidget.NoEditTriggers)
            table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
            table.horizontalHeader().setStretchLastSection(True)

        chooser = QHBoxLayout()
        chooser.addWidget(QLabel("plan", self))
        chooser.addWidget(self.plan_box, 1)
        left = QVBoxLayout()
        left.addLayout(chooser)
        left.addLayout(self.form)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>queue</b>", self))
        right.addWidget(self.queue_table, 1)
        right.addWidget(QLabel("<b>history</b>", self))
        right.addWidget(self.history_table, 2)
        body = QHBoxLayout()
        body.addLayout(left, 1)
        body.addLayout(right, 3)
        column = QVBoxLayout(self)
        column.addWidget(self.state_line)
        column.addLayout(row)
        column.addWidget(self.reply_line)
        column.addLayout(body)
        self._build_form(self.plan_box.currentText())

        self._bridge = _Bridge()
        self._bridge.refreshed.connect(self._show)
        self._bridge.replied.connect(self._reply)
        self._jobs: queue.Queue = queue.Queue()
        self._refresh_pending = threading.Event()
        self._worker = threading.Thread(target=self._work, name="queue-panel", daemon=True)
        self._worker.start()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.refresh)
        self._timer.start(POLL_MS)
        self.destroyed.connect(lambda *_, jobs=self._jobs: jobs.put(None))
        self.refresh()

    # ------------------------------------------------------------------ the Qt side
    def refresh(self) -> None:
        """Ask for the manager's state (skipped while an answer is still on its way)."""
        if not self._refresh_pending.is_set():
            self._refresh_pending.set()
            self._jobs.put(("refresh",))

    def close_worker(self) -> None:
        """End the worker thread (the panel is going away)."""
        self._timer.stop()
        self._jobs.put(None)

    def closeEvent(self, event):  # noqa: N802 (Qt's name)
        self.close_worker()
        super().closeEvent(event)

    def _build_form(self, plan: str) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.fields = {}
        for p in self.plans.get(plan, {}).get("parameters", []):
            name = p["name"]
            if name in HIDDEN:
                continue
            edit = QLineEdit(self)
            edit.setObjectName(f"queue_param_{name}")
            edit.setPlaceholderText(str(p.get("default", "required")))
            edit.setToolTip((p.get("annotation") or {}).get("type", ""))
            self.form.addRow(name, edit)
            self.fields[name] = edit
        if not self.fields:
            self.form.addRow(QLabel("(its parameters appear once the queue server answers)", self))

    def parameters(self) -> dict:
        """The form's non-empty fields, read as the shell reads them."""
        return {name: parse_value(edit.text()) for name, edit in self.fields.items() if edit.text().strip()}

    def _act(self, name: str) -> None:
        if name == "add":
            try:
                job = ("add", self.plan_box.currentText(), self.parameters())
            except NSBlueskyError as exc:
                self._reply(f"not queued: {exc}")
                return
        else:
            job = (name,)
        self._reply(f"{name} ...")
        self._jobs.put(job)

    def _reply(self, text: str) -> None:
        self.reply_line.setText(text)

    def _show(self, answer: dict) -> None:
        self._refresh_pending.clear()
        if answer.get("error"):
            self.status = None
            self.state_line.setText(f"<span style='color:#b00'>{answer['error']}</span>")
            for name in ("start", "pause", "resume", "stop", "abort", "add"):
                self.buttons[name].setEnabled(name == "add")  # Add still says why it cannot
            return
        if answer.get("plans") and not self.plans:
            self.plans = answer["plans"]
            self._build_form(self.plan_box.currentText())
        status = self.status = answer["status"]
        env = "open" if status.get("worker_environment_exists") else "closed"
        self.state_line.setText(f"manager {status.get('manager_state')}, environment {env}, "
                                f"{status.get('items_in_queue')} queued, {status.get('items_in_history')} in history "
                                f"({answer['addr']})")
        state = status.get("manager_state")
        self.buttons["start"].setEnabled(state == "idle" and bool(status.get("items_in_queue")))
        self.buttons["pause"].setEnabled(state == "executing_queue")
        self.buttons["resume"].setEnabled(state == "paused")
        self.buttons["stop"].setEnabled(state in ("executing_queue", "paused"))
        self.buttons["abort"].setEnabled(state in ("executing_queue", "paused"))
        self.buttons["add"].setEnabled(True)
        items = ([("running", answer["running"])] if answer.get("running") else []) + [
            (str(i + 1), item) for i, item in enumerate(answer["queue"])]
        self.queue_table.setRowCount(len(items))
        for r, (where, item) in enumerate(items):
            for c, text in enumerate((where, item_summary(item))):
                self.queue_table.setItem(r, c, QTableWidgetItem(text))
        if answer.get("history") is not None:
            self.history = answer["history"]
            rows = list(reversed(self.history))  # the newest first
            self.history_table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                when = datetime.fromtimestamp(row["time_stop"]).strftime("%H:%M:%S") if row["time_stop"] else ""
                full = (when, row["exit_status"] or "", row["plan"], ", ".join(row["raw_uids"]) or "-",
                        ", ".join(row["derived_uids"]) or "-", row["msg"] if row["exit_status"] != "completed" else "")
                short = {3: ", ".join(u[:8] for u in row["raw_uids"]) or "-",
                         4: ", ".join(u[:8] for u in row["derived_uids"]) or "-"}  # the whole uids in the tooltips
                for c, text in enumerate(full):
                    cell = QTableWidgetItem(short.get(c, str(text)))
                    cell.setToolTip(str(text))
                    self.history_table.setItem(r, c, cell)

    # ------------------------------------------------------------------ the worker thread
    def _emit(self, signal, value) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the panel was deleted while the worker answered
            pass

    def _work(self) -> None:
        client: QueueClient | None = None
        history_key, history_at, rows = None, 0.0, None
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                if client is None:
                    client = QueueClient(self.queue_dir, timeout_s=self.timeout_s)
                if job[0] == "refresh":
                    answer = self._poll(client)
                    # the history (and its catalog look-up) only when it changed, or while a derived run is awaited
                    key = answer["status"].get("items_in_history")
                    waiting = rows is not None and any(r["raw_uids"] and not r["derived_uids"] for r in rows[-5:])
                    if key != history_key or (waiting and time.monotonic() - history_at > 2.0):
                        items = client.history()[-20:]
                        try:
                            rows = history_rows(items, client.state.catalog)
                        except Exception:  # noqa: BLE001 (the catalog may not be readable yet: no derived uids then)
                            rows = history_rows(items, None)
                        history_key, history_at = key, time.monotonic()
                        answer["history"] = rows
                    self._emit(self._bridge.refreshed, answer)
                else:
                    self._emit(self._bridge.replied, self._do(client, job))
                    self.refresh_from_worker()
            except NSBlueskyError as exc:
                if client is not None:
                    client.close()
                client, history_key = None, None
                if job[0] == "refresh":
                    self._emit(self._bridge.refreshed, {"error": str(exc)})
                else:
                    self._emit(self._bridge.replied, f"{job[0]} failed: {exc}")
            except Exception as exc:  # noqa: BLE001 (one line on the panel, the worker lives on)
                if job[0] == "refresh":
                    self._emit(self._bridge.refreshed, {"error": f"queue server: {type(exc).__name__}: {exc}"})
                else:
                    self._emit(self._bridge.replied, f"{job[0]} failed: {type(exc).__name__}: {exc}")
        if client is not None:
            client.close()

    def refresh_from_worker(self) -> None:
        """After an action: the next poll comes at once (the Qt timer would otherwise wait up to a second)."""
        if not self._refresh_pending.is_set():
            self._refresh_pending.set()
            self._jobs.put(("refresh",))

    def _poll(self, client: QueueClient) -> dict:
        status = client.status()
        answer = {"status": status, "addr": client.state.control_addr, "queue": [], "running": None, "plans": None}
        if status.get("items_in_queue") or status.get("running_item_uid"):
            answer["queue"], answer["running"] = client.queue()
        if not self.plans:
            answer["plans"] = client.call("the plans request", "plans_allowed", reload=True)["plans_allowed"]
        return answer

    @staticmethod
    def _do(client: QueueClient, job: tuple) -> str:
        name = job[0]
        if name == "add":
            item = client.add(job[1], kwargs=job[2])
            return f"queued {item_summary(item)} ({item['item_uid'][:8]})"
        method, done = {"start": ("start_queue", "the queue runs"), "pause": ("pause", "pause requested"),
                        "resume": ("resume", "resumed"), "stop": ("finish", "stop requested"),
                        "abort": ("abort", "aborted; the plan is back at the front of the queue")}[name]
        getattr(client, method)()
        return done
