"""The embedded catalog's server process ends whatever happens to the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def test_a_caller_gone_before_the_address_was_said_leaves_no_server(tmp_path):
    """Seen in a suite: the IPython session that started a server exited before reading its address; the
    server's print failed, the exception skipped its exit, and it served on, unowned, until killed."""
    proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.io.catalog_server", str(tmp_path / "cat")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc.stdout.close()  # nobody will read the address
    try:
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    said = proc.stderr.read().decode(errors="replace")
    assert code == 1 and "BrokenPipeError" in said, said[-1500:]
    assert not (tmp_path / "cat" / "server.json").exists()  # no address left for others to find
