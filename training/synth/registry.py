"""The machine families by name: what ``--machine-type`` chooses from."""

from __future__ import annotations

from training.errors import SynthError

from .family import MachineModel
from .fan import FAN
from .pump import PUMP
from .scene import SceneModel
from .slider import SliderModel
from .valve import VALVE

# The families that describe only their own sound; each may be another's neighbour.
_SOURCES = {source.name: source for source in (FAN, PUMP, VALVE)}

MACHINES: dict[str, MachineModel] = {
    "slider": SliderModel(),
    **{name: SceneModel(source, _SOURCES) for name, source in _SOURCES.items()},
}


def machine_model(machine_type: object) -> MachineModel:
    """The family called `machine_type`; SynthError names the known ones for any other value."""
    if not isinstance(machine_type, str) or machine_type not in MACHINES:
        known = ", ".join(sorted(MACHINES))
        raise SynthError(f"unknown machine_type {machine_type!r}; supported: {known}")
    return MACHINES[machine_type]
