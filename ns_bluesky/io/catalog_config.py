"""A facility's catalog server: the ``catalog.yml`` that ``ns-bluesky catalog serve`` reads.

The embedded catalog (SQLite + files, :mod:`ns_bluesky.io.catalog_server`) serves one
machine. A facility runs one tiled server on PostgreSQL instead, and every command
reaches it with ``--catalog http://host:port``. The file names the two databases (the
catalog's metadata, and the SQL storage that holds the event tables), the directories
for array files and detector files, and where the api key lives; it never holds a
secret itself: no password in a database URL (libpq's ``~/.pgpass`` or ``PGPASSWORD``
hold it), no api key (a 0600 file, or ``$NS_BLUESKY_API_KEY``).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import CatalogError

#: the environment variables a client and the server read the api key from (the variable, else the file it names)
API_KEY_ENV = "NS_BLUESKY_API_KEY"
API_KEY_FILE_ENV = "NS_BLUESKY_API_KEY_FILE"

EXAMPLE_CONFIG = """\
# ns-bluesky catalog server: ns-bluesky catalog serve --config catalog.yml
# Create the two databases once (as a PostgreSQL superuser):
#   createdb -O nsbluesky ns_catalog && createdb -O nsbluesky ns_storage
# A database password goes in the server account's ~/.pgpass (0600) or PGPASSWORD, never here.
database: postgresql://nsbluesky@db.example.org:5432/ns_catalog          # runs' metadata (tiled's catalog)
storage_database: postgresql://nsbluesky@db.example.org:5432/ns_storage  # event tables (tiled's SQL storage)
data_dir: /data/ns-bluesky/arrays        # array files the server writes
detector_dir: /data/ns-bluesky/detector  # HDF5 files the detectors write; the server reads them (same path on every host)
readable_dirs: []                        # further directories of files runs may reference
host: 127.0.0.1                          # another interface: put a TLS proxy in front (the api key travels in a header)
port: 8000
api_key_file: /etc/ns-bluesky/catalog.key  # mode 0600; without it: $NS_BLUESKY_API_KEY
"""


class CatalogServerConfig(BaseModel):
    """What ``catalog.yml`` holds; unknown keys are refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database: str = Field(description="postgresql:// URL of the catalog database (runs' metadata)")
    storage_database: str = Field(description="postgresql:// URL of the SQL storage database (event tables)")
    data_dir: Path = Field(description="directory for the array files the server writes")
    detector_dir: Path = Field(description="directory detectors write HDF5 files to; the server reads them")
    readable_dirs: list[Path] = Field(default_factory=list, description="further directories runs may reference")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key_file: Path | None = Field(None, description="0600 file with the api key; else $NS_BLUESKY_API_KEY")

    @field_validator("database", "storage_database")
    @classmethod
    def _postgresql(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.split("+")[0] != "postgresql":
            raise ValueError(f"must be a postgresql:// URL, got scheme {parts.scheme or 'none'!r}")
        if parts.password:
            raise ValueError("holds a password; put it in ~/.pgpass (mode 0600) or PGPASSWORD, not in the file")
        if not parts.path.strip("/"):
            raise ValueError("names no database (postgresql://user@host:port/DATABASE)")
        return url

    @field_validator("data_dir", "detector_dir", "readable_dirs", "api_key_file")
    @classmethod
    def _absolute(cls, value):
        for path in value if isinstance(value, list) else [value]:
            if path is not None and not path.is_absolute():
                raise ValueError(f"must be an absolute path, got {str(path)!r}")
        return value

    @property
    def catalog_uri(self) -> str:
        """The catalog database for tiled's async engine."""
        scheme, rest = self.database.split(":", 1)
        return ("postgresql+asyncpg" if scheme == "postgresql" else scheme) + ":" + rest

    @property
    def storage_uri(self) -> str:
        """The SQL storage for tiled's ADBC writer (plain postgresql://)."""
        return "postgresql:" + self.storage_database.split(":", 1)[1]

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def redacted_database(self) -> str:
        """The catalog database as a log may show it (host, port, name)."""
        parts = urlsplit(self.database)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def load_config(path: str | os.PathLike) -> CatalogServerConfig:
    """Read and check ``catalog.yml``; a bad file raises CatalogError with one line that names the fault."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"cannot read the catalog config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CatalogError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path} must be a mapping of settings (see 'ns-bluesky catalog example-config')")
    try:
        return CatalogServerConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or "(file)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown setting (see 'ns-bluesky catalog example-config')"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CatalogError(f"{path}: {field}: {msg}{more}") from None


def read_key_file(path: str | os.PathLike) -> str:
    """The api key in ``path``, refused unless only its owner may read it (like ssh's keys)."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise CatalogError(f"cannot read the api key file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CatalogError(f"the api key file {path} is open to others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    if not text or not text.isalnum():
        raise CatalogError(f"the api key file {path} must hold one key of letters and digits")
    return text


def write_key_file(path: str | os.PathLike) -> Path:
    """Write a new random api key to ``path`` with mode 0600 (refuses to overwrite one)."""
    import secrets

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CatalogError(f"{path} exists already; remove it first to make a new key") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def default_key_file() -> Path:
    """``~/.config/ns-bluesky/catalog.key``: where a client looks when no variable is set."""
    import platformdirs

    return platformdirs.user_config_path("ns-bluesky") / "catalog.key"


def client_api_key() -> str | None:
    """A client's api key: ``$NS_BLUESKY_API_KEY``, else the 0600 file ``$NS_BLUESKY_API_KEY_FILE``,
    else ``~/.config/ns-bluesky/catalog.key`` if it exists; None when none is set."""
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV].strip()
    if os.environ.get(API_KEY_FILE_ENV):
        return read_key_file(os.environ[API_KEY_FILE_ENV])
    default = default_key_file()
    return read_key_file(default) if default.exists() else None


def server_api_key(cfg: CatalogServerConfig) -> str:
    """The server's api key: its ``api_key_file``, else ``$NS_BLUESKY_API_KEY``; one of them is required."""
    if cfg.api_key_file is not None:
        return read_key_file(cfg.api_key_file)
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise CatalogError(f"no api key: set api_key_file in the config (a 0600 file) or ${API_KEY_ENV}")
    if not key.isalnum():
        raise CatalogError(f"${API_KEY_ENV} must be letters and digits only")
    return key
