"""Raw and processed runs apart: two ``CatalogOfBlueskyRuns`` nodes side by side, as NSLS-II's tiled
deployments keep them.

::

    catalog root
      raw/         what the RunEngine wrote (scans, darks): cat[-1], cat[scan_id], cat[uid[:8]], slices
      processed/   the pipeline's derived runs; each names its raw run in ``parent_uid``

Why: with both in one node, the derived run of the scan just taken was ``cat[-1]`` and every
databroker habit (``cat[-1]``, ``cat[-1:-4:-1]``, ``cat[scan_id]`` next to ``cat[-1]``)
silently returned the wrong run. The link goes both ways: a derived run's ``parent_uid``
names its raw run (:func:`parent_run`), and :func:`derived_runs` finds the derived runs of a
raw one.

Catalogs written before the split keep every run in one node, ``runs``. They are read and
written in place, never converted: the raw runs are the ones without ``parent_uid``, the
processed ones those with it, an exact split because a derived run cannot be made
without one (:class:`~ns_bluesky.callbacks.derived.DerivedRun` refuses it). New runs go
into the same node, so the catalog keeps one layout; a new catalog gets the two nodes.
"""

from __future__ import annotations

from ..errors import CatalogError

RAW_CONTAINER = "raw"
PROCESSED_CONTAINER = "processed"
#: the one node of catalogs written before raw and processed runs were apart
LEGACY_CONTAINER = "runs"
CONTAINERS = (RAW_CONTAINER, PROCESSED_CONTAINER)


def runs_node(root, name: str, *, create: bool = True):
    """The ``CatalogOfBlueskyRuns`` node ``name`` of ``root``, made if missing (with ``create``).

    The spec's version 3.0 is what scan_id and partial-uid lookups need
    (``shared/reference/stack.md``).
    """
    from tiled.structures.core import Spec

    if name not in root:
        if not create:
            raise CatalogError(f"the catalog has no {name!r} node")
        root.create_container(name, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    node = root[name]
    if not any(s.name == "CatalogOfBlueskyRuns" for s in node.specs):
        raise CatalogError(f"node {name!r} exists but is not a CatalogOfBlueskyRuns; choose another name")
    return node


def is_legacy(root) -> bool:
    """Whether ``root`` holds the one-node layout of before (``runs``, and no ``raw``)."""
    keys = set(root)  # one request: the root holds a handful of nodes
    return LEGACY_CONTAINER in keys and RAW_CONTAINER not in keys


def layout_nodes(root) -> tuple:
    """``(raw, processed)`` of the catalog whose root node is ``root``: the two nodes (made when missing),
    or, in a catalog of the old layout, the two views of its ``runs`` node."""
    if is_legacy(root):
        from tiled.queries import KeyPresent

        legacy = runs_node(root, LEGACY_CONTAINER, create=False)
        return legacy.search(KeyPresent("parent_uid", exists=False)), legacy.search(KeyPresent("parent_uid"))
    return runs_node(root, RAW_CONTAINER), runs_node(root, PROCESSED_CONTAINER)


def publish_node(root):
    """The node whose metadata a server publishes to its clients (``detector_dir``): what ``raw`` reads."""
    if is_legacy(root):
        return runs_node(root, LEGACY_CONTAINER, create=False)
    layout_nodes(root)  # both nodes exist before the first client comes
    return root[RAW_CONTAINER]


def node_of(root, container: str):
    """``raw`` or ``processed`` of ``root``; anything else is refused, naming the two."""
    if container not in CONTAINERS:
        raise CatalogError(f"no container {container!r}: a catalog holds {' and '.join(map(repr, CONTAINERS))}")
    return layout_nodes(root)[CONTAINERS.index(container)]


def raw_of(cat):
    """The raw runs beside ``cat`` (``cat`` may be either node, or a search of one)."""
    return layout_nodes(cat.parent)[0]


def processed_of(cat):
    """The processed (derived) runs beside ``cat`` (``cat`` may be either node, or a search of one)."""
    return layout_nodes(cat.parent)[1]


def _uid(run_or_uid) -> str:
    if isinstance(run_or_uid, str):
        return run_or_uid
    try:
        return run_or_uid.metadata["start"]["uid"]
    except (AttributeError, KeyError, TypeError):
        raise CatalogError(f"give a run or a uid, got {type(run_or_uid).__name__}") from None


def derived_runs(cat, raw) -> list:
    """The derived runs of ``raw`` (a raw run or its uid), oldest first: ``derived_runs(cat, uid)[-1]``
    is the latest processing of that scan. ``cat``: the raw or the processed node."""
    from tiled.queries import Key

    return list(processed_of(cat).search(Key("parent_uid") == _uid(raw)).values())


def parent_run(cat, derived):
    """The raw run a derived run (or its uid) was made from."""
    run = processed_of(cat)[derived] if isinstance(derived, str) else derived
    parent = run.metadata["start"].get("parent_uid")
    if not parent:
        raise CatalogError(f"run {run.metadata['start']['uid'][:8]} is not a derived run (it names no parent_uid)")
    try:
        return raw_of(cat)[parent]
    except KeyError:
        raise CatalogError(f"the raw run {parent[:8]} of derived run {run.metadata['start']['uid'][:8]} "
                           "is not in the catalog") from None


def run_kind(start: dict) -> str:
    """``"derived"`` for a pipeline's run (it names its raw run), else ``"raw"``."""
    return "derived" if start.get("parent_uid") else "raw"
