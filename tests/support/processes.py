"""Whether a process still runs, as the tests that kill things need to know."""


def process_running(pid: int) -> bool:
    """Running (or stopped) but not exited; a zombie, exited and not yet reaped, is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
