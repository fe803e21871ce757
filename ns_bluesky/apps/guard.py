"""How every command ends on a user's error: one line starting with the program's name, exit status 1.

Shared by ``ns-bluesky`` (:mod:`.cli`) and the commands that also run as ``python -m`` (:mod:`.ioc`).
Library warnings and tracebacks go to a log file; ``NS_BLUESKY_DEBUG=1`` shows an unexpected error's traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from ..errors import NSBlueskyError


def fail(prog: str, message: str, code: int = 1) -> int:
    first = next((line.strip() for line in str(message).splitlines() if line.strip()), "failed")
    print(f"{prog}: error: {first}", file=sys.stderr)
    return code


def log_to_file() -> None:
    """Library warnings and tracebacks go to a log file, so the terminal shows only our one-line errors."""
    import logging

    import platformdirs

    path = os.environ.get("NS_BLUESKY_LOG") or str(platformdirs.user_log_path("ns-bluesky") / "ns-bluesky.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, filename=path, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    _stacks_on_sigusr1(path)


def _stacks_on_sigusr1(path: str) -> None:
    """``kill -USR1 PID`` appends every thread's stack to the log: what a command that seems stuck is
    waiting on, without stopping it (at 3 a.m. the question is where, not whether)."""
    import faulthandler
    import signal

    global _STACKS_FILE
    if hasattr(signal, "SIGUSR1") and (_STACKS_FILE is None or _STACKS_FILE.name != path):
        _STACKS_FILE = open(path, "a")  # noqa: SIM115 - held for the process's life, as faulthandler needs
        faulthandler.register(signal.SIGUSR1, file=_STACKS_FILE, all_threads=True)


_STACKS_FILE = None


def guarded(prog: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        log_to_file()
        return func(args)
    except KeyboardInterrupt:
        return fail(prog, "interrupted; open runs were closed with exit_status 'abort'", 130)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "configuration"
        return fail(prog, f"invalid {where}: {first.get('msg')}")
    except (NSBlueskyError, OSError) as exc:
        return fail(prog, str(exc))
    except Exception as exc:  # a bug: still one line, the traceback on request
        cause = exc.__cause__ if type(exc).__name__ == "FailedStatus" else None
        if isinstance(cause, NSBlueskyError):  # a device said why in its own words (a full disk, a timeout)
            return fail(prog, str(cause))
        if os.environ.get("NS_BLUESKY_DEBUG"):
            raise
        return fail(prog, f"unexpected {type(exc).__name__}: {exc} (set NS_BLUESKY_DEBUG=1 for the traceback)")
