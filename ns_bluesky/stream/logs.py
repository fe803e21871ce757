"""Per-process log files: ``~/.nanosurveyor/streaming/log/<module>.log`` unless told otherwise.

``$NS_BLUESKY_STREAM_LOG_DIR`` or the ``--log-dir`` flag moves them; ``ns-bluesky logs -f``
follows them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOG_DIR_ENV = "NS_BLUESKY_STREAM_LOG_DIR"


def log_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get(LOG_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".nanosurveyor" / "streaming" / "log"


def setup_process_logging(name: str, override: str | os.PathLike | None = None) -> Path:
    """Send this process's log records to ``<log dir>/<name>.log`` (appending, one line each)."""
    directory = log_dir(override)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name} pid %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path
