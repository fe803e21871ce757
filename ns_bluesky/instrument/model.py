"""The base of every validated description: units in field names, unknown fields refused.

Every field carries its unit in its name (``distance_m``, ``energy_eV``) so that nothing
downstream has to guess; defaults follow COSMIC at the ALS (see
``shared/reference/fccd-cosmic.md``). The models double as the JSON schema of the
start document's ``ptycho`` metadata.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
