"""The demo's path into the catalog on PostgreSQL: ``ns-bluesky demo --catalog URL``, then the commands that read it.

The raw, dark and derived runs go over HTTP to ``ns-bluesky catalog serve``; the
detector files go where the server said it reads them; ``runs`` finds the scan by
scan id, sample and text, and ``nsraw2cxi`` reads its frames back through the
server. The api key travels as a 0600 file named by ``$NS_BLUESKY_API_KEY_FILE``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "ns_bluesky.apps.cli"]


def _run(cmd, served, timeout=300, **env):
    proc = subprocess.run(cmd, env=served.env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2500:]
    return proc.stdout


def test_demo_writes_raw_dark_and_derived_runs_into_the_served_catalog(pg_catalog, tmp_path):
    out = tmp_path / "demo"
    _run([*CLI, "demo", "--scan", "4x4", "--darks", "2", "--rate", "0", "--refine", "0", "--workers", "1", "--quiet",
          "--sample-name", "pg-demo", "--catalog", pg_catalog.url, "--out", str(out)], pg_catalog)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_status"] == "success" and summary["frames"] == 16 and summary["catalog"] == pg_catalog.url
    assert summary["derived_uid"], "no derived run"
    assert list(pg_catalog.detector_dir.glob("*.h5")), "the detector wrote nowhere the server reads"

    rows = json.loads(_run([*CLI, "runs", "--catalog", pg_catalog.url, "--scan-id", str(summary["scan_id"]), "--json"],
                           pg_catalog))
    assert [(r["kind"], r["uid"]) for r in rows] == [("raw", summary["raw_uid"]), ("derived", summary["derived_uid"])]
    assert rows[0]["status"] == "success" and rows[1]["parent_uid"] == summary["raw_uid"]
    by_sample = json.loads(_run([*CLI, "runs", "--sample", "pg-demo", "--json"], pg_catalog,  # the URL from the environment
                                NS_BLUESKY_CATALOG=pg_catalog.url))
    assert {summary["raw_uid"], summary["dark_uid"]} <= {r["uid"] for r in by_sample}
    by_text = json.loads(_run([*CLI, "runs", "--catalog", pg_catalog.url, "--text", "ptycho_scan", "--json"], pg_catalog))
    assert summary["raw_uid"] in {r["uid"] for r in by_text}

    cxi = tmp_path / "raw.cxi"
    _run([sys.executable, "-c", "import sys; from ns_bluesky.apps.cli import nsraw2cxi_main; "
          "sys.exit(nsraw2cxi_main(sys.argv[1:]))", str(summary["scan_id"]), "--catalog", pg_catalog.url,
          "-o", str(cxi), "--quiet"], pg_catalog)
    with h5py.File(cxi) as f:
        frames = f["entry_1/data_1/data"]
        assert frames.shape[0] == 16 and np.isfinite(frames[3]).all()


def test_a_url_catalog_without_the_key_says_how_to_give_it(pg_catalog):
    env = {k: v for k, v in pg_catalog.env().items() if not k.startswith("NS_BLUESKY_API_KEY")}
    env["XDG_CONFIG_HOME"] = "/nonexistent"  # no ~/.config/ns-bluesky/catalog.key either
    proc = subprocess.run([*CLI, "runs", "--catalog", pg_catalog.url], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("ns-bluesky: error: the tiled server at http://127.0.0.1:")
    assert "wants an api key: it is needed and none is set; set $NS_BLUESKY_API_KEY" in proc.stderr
