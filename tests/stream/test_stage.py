"""The stage contract: a facility's own stage, found through its package's entry point or a dotted path,
runs in a real pipeline without this package knowing it; bad references fail naming what is wrong."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from ns_bluesky.stream.protocol import Message
from ns_bluesky.stream.stage import ENTRY_POINT_GROUP, Stage, load_stage, stage_names
from tests.support.pipeline import send_run

FACILITY_STAGE = '''
"""A facility's own stage, in its own package: doubles each frame."""

import numpy as np

from ns_bluesky.stream.protocol import Message
from ns_bluesky.stream.stage import Stage


class DoubleStage(Stage):
    name = "double"
    inputs = ("frame",)
    outputs = ("doubled",)

    def process(self, msg):
        return Message("result", run=msg.run, seq=msg.seq, stage="doubled",
                       arrays={"image": 2 * np.asarray(msg.arrays["image"], np.int32)})
'''


@pytest.fixture
def facility_package(tmp_path, monkeypatch):
    """``facility_stages`` installed the way pip installs a package: code plus a dist-info with its entry point."""
    site = tmp_path / "site"
    (site / "facility_stages").mkdir(parents=True)
    (site / "facility_stages" / "__init__.py").write_text(FACILITY_STAGE)
    info = site / "facility_stages-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facility-stages\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ndouble = facility_stages:DoubleStage\n")
    monkeypatch.syspath_prepend(str(site))  # this process: the configuration is checked here
    monkeypatch.setenv("PYTHONPATH", str(site))  # the handler and its workers
    importlib.invalidate_caches()
    load_stage.cache_clear()
    yield site
    load_stage.cache_clear()
    sys.modules.pop("facility_stages", None)


def _doubled_frames(make_pipeline, module: str) -> list[Message]:
    pipe = make_pipeline(f'[[modules]]\nname = "double"\nmodule = "{module}"\nworkers = 2\n')
    client = pipe.ingest()
    send_run(client, "facility-1", 6, shape=(8, 8))
    client.flush(30)
    msgs = pipe.results.collect(lambda ms: any(m.kind == "end_of_run" for m in ms), 60)
    client.close()
    return [m for m in msgs if m.kind == "result" and m.stage == "doubled"]


@pytest.mark.slow
def test_a_facility_stage_found_by_its_entry_point_runs_in_a_real_pipeline(facility_package, make_pipeline):
    assert "double" in stage_names() and "frame" in stage_names()
    results = _doubled_frames(make_pipeline, "double")
    assert sorted(m.seq for m in results) == list(range(6))
    for m in results:
        np.testing.assert_array_equal(m.arrays["image"], np.full((8, 8), 2 * m.seq))


@pytest.mark.slow
def test_a_stage_named_by_its_dotted_path_needs_no_entry_point(facility_package, make_pipeline):
    (facility_package / "facility_stages-1.0.dist-info" / "entry_points.txt").unlink()
    assert "double" not in stage_names()
    assert len(_doubled_frames(make_pipeline, "facility_stages:DoubleStage")) == 6


def test_the_built_in_stages_are_entry_points_and_declare_the_contract():
    for name in ("dark", "frame", "image", "recon", "cxiwrite", "echo", "tally"):
        cls = load_stage(name)
        assert issubclass(cls, Stage) and cls.name == name
        for hook in ("start_run", "process", "end_run", "abort_run"):
            assert callable(getattr(cls, hook))


def test_bad_stage_references_say_what_is_wrong():
    with pytest.raises(KeyError, match="unknown stage type 'nope'; installed: .*frame"):
        load_stage("nope")
    with pytest.raises(KeyError, match="cannot be loaded"):
        load_stage("tests.support.no_such_module:Stage")
    with pytest.raises(KeyError, match="not a Stage subclass"):
        load_stage("tests.support.stages:NotAStage")


def test_a_stage_sends_early_results_only_through_the_emitter_it_was_given():
    sent = []
    stage = load_stage("echo")(emit=sent.append, aborted={"gone"})
    msg = Message("result", run="r", seq=1, stage="echo")
    stage.emit(msg)
    assert sent == [msg]
    assert stage.should_stop("gone") and not stage.should_stop("r")
    with pytest.raises(RuntimeError, match="emitter"):
        load_stage("echo")().emit(msg)
