"""Raw and processed runs apart: cat[-1], cat[scan_id] and slices are scans; derived runs beside them, linked
both ways; a catalog of the old one-node layout is read (and written) without mixing them up."""

from __future__ import annotations

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det
from tiled.client import from_uri
from tiled.structures.core import Spec

from ns_bluesky.callbacks.derived import DerivedRun
from ns_bluesky.errors import CatalogError
from ns_bluesky.io.catalog import _embedded_server_uri, get_run, make_tiled_writer, open_catalog, search_runs
from ns_bluesky.io.catalog_layout import (
    LEGACY_CONTAINER,
    derived_runs,
    parent_run,
    processed_of,
    raw_of,
    run_kind,
)


def _scans(node, n: int, start_id: int = 0) -> list[str]:
    RE = RunEngine({"scan_id": start_id}, call_returns_result=False)
    RE.subscribe(make_tiled_writer(node, batch_size=1))
    return [RE(bp.count([det], 2), sample_name="star")[0] for _ in range(n)]


def _derived(node, tmp_path, parent_uid: str, scan_id: int) -> str:
    run = DerivedRun(make_tiled_writer(node, batch_size=1), tmp_path, parent_uid=parent_uid,
                     md={"parent_scan_id": scan_id, "parent_sample_name": "star"})
    run.add("reconstruction", {"iteration": 1, "residual": 0.5})
    run.close()
    return run.uid


def _uid(run) -> str:
    return run.metadata["start"]["uid"]


def test_derived_runs_live_beside_the_raw_ones_and_link_both_ways(tmp_path):
    cat = open_catalog(tmp_path / "cat")
    processed = processed_of(cat)
    assert set(cat.parent) == {"raw", "processed"}
    assert open_catalog(tmp_path / "cat", container="processed").uri == processed.uri
    first, second = _scans(cat, 2)
    derived = _derived(processed, tmp_path, second, 2)  # the pipeline finishes after the scan: the newest run

    assert _uid(cat[-1]) == second and cat[-1].metadata["start"]["plan_name"] == "count"
    assert _uid(cat[2]) == second and _uid(cat[1]) == first  # by scan_id
    assert [_uid(r) for r in cat.values()[-1:-3:-1]] == [second, first]  # slices: scans only
    assert len(cat) == 2 and list(processed) == [derived]
    assert [_uid(r) for r in derived_runs(cat, second)] == [derived] and derived_runs(cat, first) == []
    assert [_uid(r) for r in derived_runs(processed, cat[2])] == [derived]  # from either node, by run or uid
    assert _uid(parent_run(cat, derived)) == second and _uid(parent_run(processed, processed[derived])) == second
    assert _uid(get_run(cat, derived[:8])) == derived  # a uid prefix finds a derived run too
    assert run_kind(processed[derived].metadata["start"]) == "derived" and run_kind(cat[1].metadata["start"]) == "raw"
    assert list(search_runs(processed, scan_id=2, derived=True)) == [derived]
    assert list(search_runs(processed, sample="star", derived=True)) == [derived]
    with pytest.raises(CatalogError, match="is not a derived run"):
        parent_run(cat, cat[1])
    with pytest.raises(CatalogError, match="no container 'derived'"):
        open_catalog(tmp_path / "cat", container="derived")


def test_a_catalog_of_the_old_layout_is_read_and_written_in_place(tmp_path):
    """Before the split every run went to one node, ``runs``: its raw runs are those without parent_uid."""
    d = tmp_path / "old"
    root = from_uri(_embedded_server_uri(d))
    root.create_container(LEGACY_CONTAINER, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    runs = root[LEGACY_CONTAINER]
    (scan,) = _scans(runs, 1)
    derived = _derived(runs, tmp_path, scan, 1)  # written the old way: the derived run was runs[-1]
    assert _uid(runs[-1]) == derived

    cat = open_catalog(d, create=False)
    assert set(from_uri(_embedded_server_uri(d))) == {LEGACY_CONTAINER}  # no second layout made beside it
    assert _uid(cat[-1]) == scan and _uid(cat[1]) == scan and len(cat) == 1
    processed = processed_of(cat)
    assert list(processed) == [derived] and _uid(raw_of(processed)[-1]) == scan
    assert [_uid(r) for r in derived_runs(cat, scan)] == [derived] and _uid(parent_run(cat, derived)) == scan

    (again,) = _scans(cat, 1, start_id=1)  # new runs go into the same node, each read as its kind
    newer = _derived(processed, tmp_path, again, 2)
    # a fresh node: tiled's client keeps a node's length for a second (LENGTH_CACHE_TTL), and `runs` was counted
    # within it on a fast host (CI: 2 against 4)
    assert len(from_uri(_embedded_server_uri(d))[LEGACY_CONTAINER]) == 4
    assert _uid(cat[-1]) == again and _uid(cat[2]) == again
    assert _uid(processed[-1]) == newer and len(processed) == 2
