"""catalog.yml and the api key: a bad file or a key open to others is refused with one line that says why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ns_bluesky.errors import CatalogError
from ns_bluesky.io.catalog import open_catalog
from ns_bluesky.io.catalog_config import (
    EXAMPLE_CONFIG,
    CatalogServerConfig,
    client_api_key,
    load_config,
    read_key_file,
    server_api_key,
    write_key_file,
)

GOOD = {
    "database": "postgresql://nsb@127.0.0.1:5432/cat",
    "storage_database": "postgresql://nsb@127.0.0.1:5432/store",
    "data_dir": "/data/arrays",
    "detector_dir": "/data/detector",
}


def _write(tmp_path, content) -> str:
    p = tmp_path / "catalog.yml"
    p.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(p)


def test_the_example_config_is_valid_and_binds_loopback(tmp_path):
    cfg = load_config(_write(tmp_path, EXAMPLE_CONFIG))
    assert cfg.host == "127.0.0.1" and cfg.loopback and cfg.port == 8000
    assert cfg.catalog_uri.startswith("postgresql+asyncpg://") and cfg.storage_uri.startswith("postgresql://")
    assert CatalogServerConfig.model_validate(GOOD).host == "127.0.0.1"  # the default


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"database": "sqlite:///x.db"}, "database: must be a postgresql:// URL"),
        ({"database": "postgresql://nsb:hunter2@db/cat"}, "database: holds a password; put it in ~/.pgpass"),
        ({"storage_database": "postgresql://nsb@db:5432/"}, "storage_database: names no database"),
        ({"data_dir": "relative/dir"}, "data_dir: must be an absolute path"),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"databse": "postgresql://x@y/z"}, "databse: unknown setting"),
        ({"detector_dir": None}, "detector_dir:"),
    ],
)
def test_a_bad_config_gets_one_line_naming_the_setting(tmp_path, change, says):
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(CatalogError) as err:
        load_config(_write(tmp_path, raw))
    message = str(err.value)
    assert says in message and "\n" not in message and "hunter2" not in message


def test_not_yaml_or_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="is not valid YAML at line 2"):
        load_config(_write(tmp_path, "database: x\n  - : ]["))
    with pytest.raises(CatalogError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(CatalogError, match="cannot read the catalog config"):
        load_config(tmp_path / "nope.yml")


def test_key_files_are_0600_and_never_overwritten(tmp_path):
    key = write_key_file(tmp_path / "keys" / "catalog.key")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert len(read_key_file(key)) == 64
    with pytest.raises(CatalogError, match="exists already"):
        write_key_file(key)
    os.chmod(key, 0o644)
    with pytest.raises(CatalogError, match=r"open to others \(mode 644\); run: chmod 600"):
        read_key_file(key)


def test_where_the_server_and_clients_find_the_key(tmp_path, monkeypatch):
    key = write_key_file(tmp_path / "k")
    monkeypatch.delenv("NS_BLUESKY_API_KEY", raising=False)
    monkeypatch.delenv("NS_BLUESKY_API_KEY_FILE", raising=False)
    cfg = CatalogServerConfig.model_validate(GOOD)
    with pytest.raises(CatalogError, match="no api key: set api_key_file"):
        server_api_key(cfg)
    monkeypatch.setenv("NS_BLUESKY_API_KEY", "abc123")
    assert server_api_key(cfg) == "abc123" and client_api_key() == "abc123"
    assert server_api_key(cfg.model_copy(update={"api_key_file": key})) == read_key_file(key)
    monkeypatch.delenv("NS_BLUESKY_API_KEY")
    monkeypatch.setenv("NS_BLUESKY_API_KEY_FILE", str(key))
    assert client_api_key() == read_key_file(key)


def test_a_key_in_the_catalog_url_is_refused():
    with pytest.raises(CatalogError, match="do not put the api key in the catalog URL"):
        open_catalog("http://127.0.0.1:9/?api_key=secret")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ns_bluesky.apps.cli", "catalog", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_the_catalog_commands_help_a_facility_start(tmp_path):
    example = _cli("example-config")
    assert example.returncode == 0 and "database: postgresql://" in example.stdout
    (tmp_path / "catalog.yml").write_text(example.stdout)
    made = _cli("new-key", str(tmp_path / "catalog.key"))
    assert made.returncode == 0 and "mode 0600" in made.stdout
    cfg = yaml.safe_load(example.stdout)
    cfg["api_key_file"] = str(tmp_path / "catalog.key")
    (tmp_path / "catalog.yml").write_text(yaml.safe_dump(cfg))
    check = _cli("check", "--config", str(tmp_path / "catalog.yml"))
    assert check.returncode == 0 and ": ok (catalog database db.example.org:5432/ns_catalog" in check.stdout
    key = read_key_file(tmp_path / "catalog.key")
    assert key not in check.stdout + check.stderr
    cfg["port"] = "eighty"
    (tmp_path / "catalog.yml").write_text(yaml.safe_dump(cfg))
    bad = _cli("serve", "--config", str(tmp_path / "catalog.yml"))
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("ns-bluesky: error: ") and "port: Input should be a valid integer" in bad.stderr


def test_without_postgresql_the_skip_reason_names_the_package(monkeypatch):
    from tests.support import postgres

    monkeypatch.setattr(postgres, "_pg_bin", lambda: None)
    with pytest.raises(RuntimeError, match=r"PostgreSQL is not installed \(apt-get install -y postgresql\)"):
        postgres.start_postgres()
