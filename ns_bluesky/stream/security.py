"""Who may talk to a pipeline: its owner on this machine, and hosts given its CURVE keys.

Without ``curve_keys`` (the default) the handler binds no TCP port at all: its four
sockets are ``ipc://`` endpoints in a directory only the user who started it can enter
(``/tmp/ns-bluesky-<uid>``, mode 0700, checked to be theirs before anything binds or
connects there). The kernel then refuses every other local user at ``connect`` (root
aside, who can read any process's memory anyway), at no cost per message: over ipc a
2.4 MB frame costs less CPU than over TCP loopback, where CURVE adds its encryption on
both ends (``benchmarks/transport.py`` measures the three side by side).

With ``curve_keys`` (``ns-bluesky keys generate DIR``: a server and a client key pair,
the secret halves 0600 in a 0700 directory) the handler binds TCP on ``host`` with CURVE
and accepts only clients whose public key is in ``DIR/authorized/``: remote and
SLURM-placed workers and clients on other hosts. Keys travel as a directory name, never
in a URL, a command line or a log.
"""

from __future__ import annotations

import os
import shutil
import socket as pysocket
import stat
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth

from ..errors import ParameterError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with its terminating NUL

_authenticators: dict[int, object] = {}


def _private_dir(d: Path, what: str) -> Path:
    """Create ``d`` 0700, or check that it is a real directory of this user's that no one else can enter."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ParameterError(f"{what} {d} is not a directory (a link?); remove it or choose another")
    if st.st_uid != os.geteuid():
        raise ParameterError(f"{what} {d} belongs to uid {st.st_uid}, not to you ({os.geteuid()}); remove it or choose another")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)  # ours: tightened, never loosened
    return d


def generate(directory: str | os.PathLike) -> Path:
    """Create the server and client key pairs and authorise the client (secrets 0600, the directory 0700)."""
    d = _private_dir(Path(directory).expanduser(), "key directory")
    for name in ("server", "client"):
        zmq.auth.create_certificates(str(d), name)
    (d / "authorized").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(d / "client.key", d / "authorized" / "client.key")
    os.chmod(d / "server.key_secret", 0o600)
    os.chmod(d / "client.key_secret", 0o600)
    return d


def _load(directory: Path, name: str) -> tuple[bytes, bytes]:
    path = directory / f"{name}.key_secret"
    if not path.is_file():
        raise ParameterError(f"CURVE key {path} not found; run 'ns-bluesky keys generate {directory}'")
    if path.stat().st_mode & 0o077:
        raise ParameterError(f"CURVE key {path} is readable by others: anyone who reads it gets in; chmod 600 it")
    public, secret = zmq.auth.load_certificate(str(path))
    return public, secret


# ------------------------------------------------------------------ ipc endpoints (no keys: this user only)
def socket_dir(cfg) -> Path:
    """The 0700 directory of this user's pipeline sockets (made if missing, refused if anyone else's)."""
    d = Path(cfg.socket_dir).expanduser() if cfg.socket_dir else Path("/tmp") / f"ns-bluesky-{os.geteuid()}"
    return _private_dir(d, "socket directory")


def ipc_path(cfg, port: int) -> Path:
    """The socket file standing for ``port`` (the configured port numbers name a keyless pipeline's sockets)."""
    path = socket_dir(cfg) / str(port)
    if len(str(path)) > UNIX_PATH_MAX:
        raise ParameterError(f"socket path {path} is longer than the {UNIX_PATH_MAX} bytes a Unix socket may have; set socket_dir shorter")
    return path


def endpoint(cfg, port: int, *, connect: bool = False) -> str:
    """Where a socket for ``port`` binds or connects: ipc in the private directory without keys, TCP with them."""
    if cfg.curve_keys:
        host = "127.0.0.1" if connect and cfg.host in ("0.0.0.0", "*") else cfg.host
        return f"tcp://{host}:{port}"
    return f"ipc://{ipc_path(cfg, port)}"


def claim(path: Path) -> None:
    """Refuse to bind over a socket file another live process listens on (libzmq would silently take it over)."""
    if not path.exists():
        return
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: a socket left by a killed handler, rebound
    finally:
        probe.close()
    raise zmq.ZMQError(zmq.EADDRINUSE, f"{path} is in use by another pipeline (same ports?)")


# ------------------------------------------------------------------ CURVE (TCP, any interface)
def server_security(cfg, ctx: zmq.Context) -> Callable[[zmq.Socket], None]:
    """A function that secures a server socket, or refuses a non-loopback bind without keys."""
    if not cfg.curve_keys:
        if cfg.host not in LOOPBACK:
            raise ParameterError(
                f"refusing to bind {cfg.host} without CURVE keys: anyone on that network could feed or read the "
                "pipeline. Run 'ns-bluesky keys generate DIR' and set curve_keys = DIR, or bind 127.0.0.1"
            )
        return lambda sock: None  # ipc in a 0700 directory: the kernel keeps everyone else out
    directory = Path(cfg.curve_keys).expanduser()
    public, secret = _load(directory, "server")
    if id(ctx) not in _authenticators:
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(directory / "authorized"))
        _authenticators[id(ctx)] = auth

    def secure(sock: zmq.Socket) -> None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True

    return secure


def client_keys(directory: str | os.PathLike) -> dict[str, bytes]:
    d = Path(directory).expanduser()
    public, secret = _load(d, "client")
    server_public, _ = zmq.auth.load_certificate(str(d / "server.key"))
    return {"public": public, "secret": secret, "server": server_public}


def secure_client(sock: zmq.Socket, directory: str | os.PathLike | None) -> None:
    if directory:
        keys = client_keys(directory)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = keys["secret"], keys["public"], keys["server"]
