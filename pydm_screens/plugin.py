"""The ``nsstream://`` PyDM data plugin: the pipeline's results and control in any PyDM widget.

Registered through the ``pydm.data_plugin`` entry point, so a plain ``pydm`` finds it.
Each connection polls the process's :class:`~ns_bluesky.pydm_screens.hub.StreamHub`
from a Qt timer in the GUI thread and emits only what changed, so images arrive at
most ``POLL_MS`` apart however fast the pipeline publishes, and nothing in the GUI
thread ever waits on the network. A connection is up while the handler answers its
status poll, and goes down (widgets show it) while the pipeline is away.
"""

from __future__ import annotations

import numpy as np
from pydm.data_plugins.plugin import PyDMConnection, PyDMPlugin
from qtpy.compat import isalive
from qtpy.QtCore import Qt, QTimer

from .hub import hub

POLL_MS = 100


class NSStreamConnection(PyDMConnection):
    def __init__(self, channel, address, protocol=None, parent=None):
        super().__init__(channel, address, protocol, parent)
        self.hub = hub()
        self.writable = address.startswith("control/")
        self.always_up = address == "control/start"  # the one button that must work while the pipeline is away
        self._version = 0
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll)
        self.add_listener(channel)
        self._timer.start(POLL_MS)
        self._poll()

    def add_listener(self, channel):
        super().add_listener(channel)
        if self.writable and channel.value_signal is not None:
            for kind in (int, float, str, bool):
                try:
                    channel.value_signal[kind].connect(self.put_value, Qt.QueuedConnection)
                except (KeyError, TypeError):
                    pass
        # a new listener gets the state and the value now, not at the next change
        self.connection_state_signal.emit(self.connected)
        self.write_access_signal.emit(self.writable and self.connected)
        if self.value is not None:
            self._emit(self.value)

    def _poll(self) -> None:
        current = hub()
        if current is not self.hub:  # the pipeline watched changed ($NS_BLUESKY_PIPELINE): follow it
            self.hub, self._version = current, 0
        up = self.always_up or self.hub.alive
        if up != self.connected:
            self.connected = up
            self.connection_state_signal.emit(up)
            self.write_access_signal.emit(self.writable and up)
        version, value = self.hub.get(self.address, since=self._version)
        if version != self._version and value is not None:
            self._version, self.value = version, value
            self._emit(value)

    def _emit(self, value) -> None:
        if isinstance(value, bool):
            self.new_value_signal[bool].emit(value)
        elif isinstance(value, (int, np.integer)):
            self.prec_signal.emit(0)
            self.new_value_signal[int].emit(int(value))
        elif isinstance(value, (float, np.floating)):
            self.prec_signal.emit(4 if 0 < abs(value) < 10 else 1)  # a residual needs digits, a rate does not
            self.new_value_signal[float].emit(float(value))
        elif isinstance(value, str):
            self.new_value_signal[str].emit(value)
        else:
            self.new_value_signal[object].emit(value)

    def put_value(self, new_value, *_):
        if self.writable and self.connected:
            self.hub.command(self.address, new_value)

    def close(self):
        if isalive(self._timer):  # Qt may have deleted it with its parent already
            self._timer.stop()


class NSStreamPlugin(PyDMPlugin):
    protocol = "nsstream"
    connection_class = NSStreamConnection

    # PyDM hands a connection only the host part of the address; ours is the whole path
    get_address = staticmethod(PyDMPlugin.get_full_address)
