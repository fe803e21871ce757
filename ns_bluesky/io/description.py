"""Read a beamline description (YAML or TOML) into :class:`~ns_bluesky.instrument.beamline.BeamlineDescription`.

The model lives with the instrument (pydantic only); reading files is this layer's job.
A bad file must fail before any device or IOC starts, with one line that names the file,
the field and what is wrong with it, so the facility's editor knows where to look.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import ValidationError

from ..errors import ParameterError
from ..instrument.beamline import BeamlineDescription

DESCRIPTION_ENV = "NS_BLUESKY_BEAMLINE"


def _parse(path: Path) -> object:
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ParameterError(f"{path}: not valid TOML: {exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ParameterError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    raise ParameterError(f"{path}: a beamline description is a .yaml, .yml or .toml file")


def load_description(path: str | os.PathLike) -> BeamlineDescription:
    """The validated description in ``path``; ``ParameterError`` naming the field if it is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"beamline description {path} does not exist")
    data = _parse(path)
    if data is None:
        data = {}  # an empty file: every default
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: a beamline description is a mapping of sections, got {type(data).__name__}")
    try:
        return BeamlineDescription.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ParameterError(f"{path}: field {field}: {first['msg']}{more}") from None


def description_to_yaml(description: BeamlineDescription) -> str:
    """The description as YAML with every field spelled out: the template a facility edits."""
    import yaml

    return yaml.safe_dump(description.model_dump(mode="json"), sort_keys=False)
