"""The beamline description: YAML and TOML read alike, and a bad file is refused naming the file and the field."""

from __future__ import annotations

import pytest

from ns_bluesky.apps.cli import main as cli_main
from ns_bluesky.errors import ParameterError
from ns_bluesky.instrument.beamline import BeamlineDescription
from ns_bluesky.io.description import description_to_yaml, load_description
from ns_bluesky.ophyd_devices import make_beamline

TOML = """
prefix = "XF:23ID1-ES:"
[stage]
y = "PTY:SY"
x = "PTY:SX"
[detector]
prefix = "FCCD1:"
[detector.geometry]
distance_m = 0.12
[ioc]
high_limit_m = 2e-5
"""


def test_yaml_and_toml_give_the_same_description(tmp_path):
    toml = tmp_path / "bl.toml"
    toml.write_text(TOML)
    d = load_description(toml)
    assert d.stage.x == "PTY:SX" and d.pv(d.stage.x) == "XF:23ID1-ES:PTY:SX"
    assert d.cam_prefix == "XF:23ID1-ES:FCCD1:cam1:" and d.hdf_prefix == "XF:23ID1-ES:FCCD1:HDF1:"
    assert d.detector.geometry.distance_m == 0.12 and d.detector.geometry.raw_shape == (1040, 1152)
    assert d.shutter == BeamlineDescription().shutter  # what the file leaves out keeps its default
    yaml_path = tmp_path / "bl.yaml"
    yaml_path.write_text(description_to_yaml(d))
    assert load_description(yaml_path) == d
    (tmp_path / "empty.yml").write_text("")
    assert load_description(tmp_path / "empty.yml") == BeamlineDescription()


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("type.yaml", "stage: {x: 3}", "field stage.x: Input should be a valid string"),
        ("unknown.yaml", "stage: {z: 'SS:Z'}", "field stage.z: Extra inputs are not permitted"),
        ("negative.toml", "[ioc]\nvelocity_m_s = -1", "field ioc.velocity_m_s: Input should be greater than 0"),
        ("braces.yaml", "prefix: 'XF:{Mtr}'", "field prefix: Value error, 'XF:{Mtr}' is not a usable PV name"),
        ("dot.yaml", "shutter: {status: 'SH.VAL'}", "field shutter.status: Value error"),
        ("same.yaml", "stage: {y: 'M1', x: 'M1'}", "field stage: Value error, y and x name the same motor record"),
        ("limits.yaml", "ioc: {low_limit_m: 1.0e-4}", "field ioc: Value error, low_limit_m=0.0001 must be below"),
        ("stop.yaml", "ioc: {zone_plate: {central_stop_diameter_m: 3.0e-4}}", "field ioc.zone_plate: Value error"),
        ("geometry.yaml", "detector: {geometry: {channels: 191}}", "field detector.geometry: Value error, channels"),
        ("syntax.yaml", "stage: {x: [", "not valid YAML"),
        ("syntax.toml", "prefix = ", "not valid TOML"),
        ("list.yaml", "- a\n- b", "a beamline description is a mapping of sections, got list"),
        ("beamline.json", "{}", "a beamline description is a .yaml, .yml or .toml file"),
    ],
)
def test_a_bad_description_names_the_file_and_the_field(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ParameterError) as err:
        load_description(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_a_missing_description_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        load_description(tmp_path / "nowhere.yaml")


def test_the_ioc_command_and_make_beamline_refuse_a_bad_description_before_starting(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optics: {energy: 800}\n")
    assert cli_main(["ioc", "--description", str(bad), "--port", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ns-bluesky: error: {bad}: field optics.energy: Input should be a valid string"
    with pytest.raises(ParameterError, match="field optics.energy"):
        make_beamline(bad, tmp_path / "detector")
    assert cli_main(["ioc", "--prefix", "BL 7:"]) == 1
    assert "invalid prefix" in capsys.readouterr().err
