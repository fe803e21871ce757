"""CURVE security: loopback needs none; any other interface needs keys, and clients need the right ones.

``ns-bluesky keys generate DIR`` writes a server key pair and a client key pair
(``DIR/server.key_secret``, ``DIR/client.key_secret``, and their public halves); the
handler accepts only clients whose public key is in ``DIR/authorized/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth

from ..errors import ParameterError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_authenticators: dict[int, object] = {}


def generate(directory: str | os.PathLike) -> Path:
    """Create the server and client key pairs and authorise the client."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        zmq.auth.create_certificates(str(d), name)
    (d / "authorized").mkdir(exist_ok=True)
    shutil.copy(d / "client.key", d / "authorized" / "client.key")
    os.chmod(d / "server.key_secret", 0o600)
    os.chmod(d / "client.key_secret", 0o600)
    return d


def _load(directory: Path, name: str) -> tuple[bytes, bytes]:
    path = directory / f"{name}.key_secret"
    if not path.is_file():
        raise ParameterError(f"CURVE key {path} not found; run 'ns-bluesky keys generate {directory}'")
    public, secret = zmq.auth.load_certificate(str(path))
    return public, secret


def server_security(cfg, ctx: zmq.Context) -> Callable[[zmq.Socket], None]:
    """A function that secures a server socket, or refuses a non-loopback bind without keys."""
    if not cfg.curve_keys:
        if cfg.host not in LOOPBACK:
            raise ParameterError(
                f"refusing to bind {cfg.host} without CURVE keys: anyone on that network could feed or read the "
                "pipeline. Run 'ns-bluesky keys generate DIR' and set curve_keys = DIR, or bind 127.0.0.1"
            )
        return lambda sock: None
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
