"""``ns-bluesky gui live|status|viewer``: a screen in PyDM's own application window."""

from __future__ import annotations

import os
from pathlib import Path

from ns_bluesky.errors import NSBlueskyError

HERE = Path(__file__).resolve().parent
SCREENS = {"live": "live.py", "status": "status.py", "viewer": "viewer.py"}


def screen_path(name: str) -> Path:
    """The Display file of a screen, for ``pydm`` or ``PyDMApplication``."""
    return HERE / SCREENS[name]


def run_gui(screen: str, display_args: list[str], *, config: str | None = None, screenshot: str | None = None,
            after_s: float = 10.0) -> int:
    """Open ``screen``; with ``screenshot`` save the window as a PNG after ``after_s`` seconds and quit."""
    if config:
        os.environ["NS_BLUESKY_PIPELINE"] = str(Path(config).resolve())  # read by the nsstream plugin's hub
    try:
        from pydm import PyDMApplication
        from qtpy.QtCore import QTimer
    except ImportError as exc:
        raise NSBlueskyError(f"the screens need PyDM and Qt: pip install 'ns-bluesky[gui]' ({exc})") from None
    app = PyDMApplication(ui_file=str(screen_path(screen)), command_line_args=display_args, hide_nav_bar=True)
    if screenshot:
        def shoot():
            app.main_window.grab().save(screenshot)
            print(f"screenshot: {screenshot}")
            app.quit()

        QTimer.singleShot(int(after_s * 1000), shoot)
    return app.exec_()
