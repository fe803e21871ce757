"""A derived run written through TiledWriter into the real catalog, found by its raw run, arrays read back."""

import numpy as np
import pytest
from ns_bluesky.callbacks.derived import DerivedRun
from tiled.queries import Key

from ns_bluesky.errors import ParameterError
from ns_bluesky.io.catalog import detector_dir, make_tiled_writer


def _emit_to(cat, docs):
    writer = make_tiled_writer(cat)

    def emit(name, doc):
        docs.append((name, doc))
        writer(name, doc)

    return emit


def test_results_become_a_run_linked_to_its_raw_run(processed, catalog_dir, recorded):
    docs = []
    run = DerivedRun(_emit_to(processed, docs), detector_dir(catalog_dir), parent_uid=recorded["scan"], dark_uid=recorded["dark"],
                     md={"engine": "lsqml"})
    rng = np.random.default_rng(0)
    phases = [rng.normal(size=(48, 40)).astype(np.float32) for _ in range(3)]
    for i, phase in enumerate(phases):
        run.add("reconstruction", {"iteration": 10 * (i + 1), "residual": 0.1 / (i + 1)},
                {"object_phase": phase, "object_amplitude": np.abs(phase), "probe_amplitude": np.ones((16, 16), np.float32)})
    run.add("stxm", {"frames": 20}, {"transmission": np.full((4, 5), 0.9, np.float32)})
    for seq in range(1, 21):
        run.add("frames_qc", {"seq": seq, "photons": 1000.0 + seq, "saturated": 0, "flags": "" if seq != 7 else "nan"})
    stop = run.close()
    assert stop["exit_status"] == "success" and stop["num_events"]["frames_qc"] == 20
    assert [n for n, _ in docs].count("stream_resource") == 4  # one HDF5 file per array key

    found = processed.search(Key("parent_uid") == recorded["scan"])
    assert list(found) == [run.uid]
    derived = found[run.uid]
    assert derived.metadata["start"]["dark_uid"] == recorded["dark"] and derived.metadata["start"]["engine"] == "lsqml"
    recon = derived["reconstruction"]
    np.testing.assert_array_equal(recon["object_phase"].read(), np.stack(phases))
    assert list(recon["iteration"].read()) == [10, 20, 30]
    assert derived["stxm"]["transmission"].read().shape == (1, 4, 5)
    qc = derived["frames_qc"]
    assert list(qc["flags"].read())[6] == "nan" and len(qc["photons"].read()) == 20


def test_a_run_cut_short_still_ends_saying_why(processed, catalog_dir, recorded):
    run = DerivedRun(make_tiled_writer(processed), detector_dir(catalog_dir), parent_uid=recorded["other"])
    run.add("reconstruction", {"iteration": 1, "residual": 0.5}, {"object_phase": np.zeros((8, 8), np.float32)})
    run.close(exit_status="abort", reason="pipeline aborted by the user")
    derived = processed.search(Key("parent_uid") == recorded["other"])[run.uid]
    stop = derived.metadata["stop"]
    assert stop["exit_status"] == "abort" and stop["reason"] == "pipeline aborted by the user"


def test_results_that_change_shape_or_keys_are_refused(tmp_path):
    docs = []
    run = DerivedRun(lambda n, d: docs.append((n, d)), tmp_path, parent_uid="raw-uid")
    run.add("reconstruction", {"iteration": 1}, {"object_phase": np.zeros((8, 8), np.float32)})
    with pytest.raises(ParameterError, match="keys"):
        run.add("reconstruction", {"iteration": 2, "extra": 1.0}, {"object_phase": np.zeros((8, 8), np.float32)})
    with pytest.raises(ValueError, match="does not match"):
        run.add("reconstruction", {"iteration": 2}, {"object_phase": np.zeros((9, 8), np.float32)})
    with pytest.raises(ParameterError, match="needs the uid"):
        DerivedRun(lambda n, d: None, tmp_path, parent_uid="")
    run.close()
    assert docs[-1][0] == "stop"


def test_a_residual_not_known_yet_is_recorded_as_nan(tmp_path):
    """The first live estimate may come before any residual; NaN crosses the wire as JSON null."""
    from ns_bluesky.stream.protocol import Message, decode, encode

    sent = Message("result", run="r", seq=1, stage="recon", meta={"scalars": {"iteration": 0, "residual": float("nan")}})
    scalars = decode(encode(sent)).meta["scalars"]
    assert scalars["residual"] is None
    docs = []
    run = DerivedRun(lambda n, d: docs.append((n, d)), tmp_path, parent_uid="raw-uid")
    run.add("reconstruction", scalars)
    run.add("reconstruction", {"iteration": 1, "residual": 0.25})
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"]["residual"]["dtype"] == "number"
    residuals = [d["data"]["residual"] for n, d in docs if n == "event"]
    assert np.isnan(residuals[0]) and residuals[1] == 0.25
