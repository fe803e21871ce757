"""A real PostgreSQL server for the tests, and ``ns-bluesky catalog serve`` on it.

Debian's postgresql (``/usr/lib/postgresql/<version>/bin``) started without systemd:
``initdb`` + ``pg_ctl`` in a temporary directory, on 127.0.0.1, a free port and a
unix socket in that directory; as user ``postgres`` when the tests run as root
(initdb refuses root), as the current user otherwise. Session-scoped: started once,
stopped (``pg_ctl stop -m fast``, then SIGKILL of its process group) and removed
after. Where it is not installed or does not start, the tests that need it skip with
the reason (``pytest -rs`` lists it).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install -y postgresql"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """One running PostgreSQL cluster: ``url(db)``, ``createdb(db)``, ``restart()``."""

    bindir: Path
    root: Path
    port: int
    user: str
    as_user: list[str] = field(default_factory=list)  # ["runuser", "-u", "postgres", "--"] when root

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "pg.log"

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:]) if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def init(self) -> None:
        self._check(self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                              "-E", "UTF8", "--no-sync"), "initdb")

    def start(self) -> None:
        # pg_ctl start does not reuse the last options, so they go every time; -l keeps pg_ctl's stdout free
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._check(self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", "60", "-o", opts, "start"), "pg_ctl start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        """Stop (terminating every connection) and start again on the same port."""
        self.stop()
        self.start()

    def createdb(self, name: str) -> str:
        self._check(self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", self.user, name), f"createdb {name}")
        return self.url(name)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a new temporary directory; raises RuntimeError with the reason."""
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError(f"PostgreSQL is not installed ({INSTALL_HINT})")
    root = Path(tempfile.mkdtemp(prefix="ns-bluesky-pg-"))  # not pytest's tmp_path: user postgres cannot enter it
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as user postgres
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError("running as root and there is no user 'postgres' to run PostgreSQL as") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir=bindir, root=root, port=free_port(), user="postgres", as_user=as_user)
    try:
        server.init()
        server.start()
    except BaseException:
        stop_postgres(server)
        raise
    return server


def stop_postgres(server: PostgresServer) -> None:
    try:
        server.stop("fast")
    except subprocess.TimeoutExpired:
        pass
    pid = server.postmaster_pid()
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole session; skips with the reason where it cannot run."""
    try:
        server = start_postgres()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"PostgreSQL not available: {str(exc).splitlines()[0]}")
    try:
        yield server
    finally:
        stop_postgres(server)


@dataclass
class ServedCatalog:
    """``ns-bluesky catalog serve`` on the session's PostgreSQL: its URL and a client environment."""

    url: str
    key_file: Path
    detector_dir: Path
    config: Path
    proc: subprocess.Popen
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a client process: the api key as a 0600 file, never in the URL."""
        env = {k: v for k, v in os.environ.items() if k != "NS_BLUESKY_API_KEY"}
        return {**env, "NS_BLUESKY_API_KEY_FILE": str(self.key_file), **extra}


def write_config(path: Path, pg: PostgresServer, catalog_db: str, storage_db: str, base: Path, port: int,
                 key_file: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "database": pg.url(catalog_db), "storage_database": pg.url(storage_db),
        "data_dir": str(base / "data"), "detector_dir": str(base / "detector"),
        "host": "127.0.0.1", "port": port, "api_key_file": str(key_file),
    }))
    return path


def serve_catalog(pg: PostgresServer, base: Path, name: str = "nsb", timeout_s: float = 90.0) -> ServedCatalog:
    """Create two databases and start ``ns-bluesky catalog serve`` on them; waits until it is ready."""
    from ns_bluesky.io.catalog_config import write_key_file

    pg.createdb(f"{name}_catalog")
    pg.createdb(f"{name}_storage")
    key_file = write_key_file(base / "catalog.key")
    port = free_port()
    config = write_config(base / "catalog.yml", pg, f"{name}_catalog", f"{name}_storage", base, port, key_file)
    log = base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.apps.cli", "catalog", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    served = ServedCatalog(f"http://127.0.0.1:{port}", key_file, base / "detector", config, proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "catalog server ready" in log.read_text(errors="replace"):
            return served
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_catalog(served)
    raise RuntimeError(f"catalog serve did not start: {log.read_text(errors='replace')[-1500:]}")


def stop_catalog(served: ServedCatalog) -> None:
    try:
        os.killpg(served.proc.pid, signal.SIGTERM)
        served.proc.wait(20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(served.proc.pid, signal.SIGKILL)
        served.proc.wait(10)


@pytest.fixture(scope="module")  # not the session: an idle server takes CPU from the timing-sensitive tests after it
def pg_catalog(postgres, request):
    """One ``ns-bluesky catalog serve`` on the session's PostgreSQL, with its api key in a 0600 file."""
    base = Path(tempfile.mkdtemp(prefix="ns-bluesky-served-"))
    served = serve_catalog(postgres, base, name=request.module.__name__.rsplit(".", 1)[-1].lower())  # databases of its own
    try:
        yield served
    finally:
        stop_catalog(served)
        shutil.rmtree(base, ignore_errors=True)
