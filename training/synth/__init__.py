"""Physically motivated synthetic machine sounds, written in the DCASE 2020 Task 2 layout.

MIMII/DCASE cannot be downloaded here, so tests, the demo and the default
models train on sounds made by this package.

What it offers: `render_clip` (one clip as float32 samples), `generate_dataset`
(a DCASE-layout folder with ``anomaly_kinds.csv``, `ANOMALY_KINDS_FILE`,
beside the test clips) and its `SynthSummary`, `anomaly_kinds(machine_type)`,
`MACHINE_TYPES`, `parse_snr` (the ``--snr-db`` text: ``6`` or ``-6:6``),
`SAMPLE_RATE`, `ANOMALY_KINDS` (the slider's fault kinds) and `SynthError`
(`training.errors`), the one error type (a ValueError) for every bad argument.

How the families are registered: a family is an object with the
`family.MachineModel` protocol (fault kinds, default SNR, a seed-stream key
and `render`), listed by name in `registry.MACHINES`. The slide rail
(`slider.py`, `slider_motion.py`, `slider_faults.py`) has its own pipeline
and background, fixed so that the data set of the shipped models stays
bit-identical. The others (`fan.py`, `pump.py` on the rotor parts of
`rotor.py`; `valve.py`) each describe only the machine's own sound and its
faults; `scene.py` gives them the common rest: calibration, the room, the
microphone and the surroundings of `background.py`, the SNR and the gain.

Modules: `dsp` (oscillators, wavetables, events, noise, filters),
`background` (factory backgrounds), `family` (the protocol and shared
helpers), `dataset` (argument checks, seeding, the writer), `registry`,
one or more per family, and `proxy` (two cheap detectors' AUC per
fault kind: ``python -m training.synth.proxy fan``), which checks that the
faults stay subtle. Imports run one way: dsp <- background, family, rotor <-
the families, scene <- registry <- dataset <- this module; none imports the CLI.
"""

from __future__ import annotations

from training.errors import SynthError

from .dataset import (
    ANOMALY_KINDS_FILE,
    SAMPLE_RATE,
    SynthSummary,
    anomaly_kinds,
    generate_dataset,
    parse_snr,
    render_clip,
)
from .registry import MACHINES
from .slider_motion import ANOMALY_KINDS

MACHINE_TYPES: tuple[str, ...] = tuple(sorted(MACHINES))

__all__ = [
    "ANOMALY_KINDS",
    "ANOMALY_KINDS_FILE",
    "MACHINE_TYPES",
    "SAMPLE_RATE",
    "SynthError",
    "SynthSummary",
    "anomaly_kinds",
    "generate_dataset",
    "parse_snr",
    "render_clip",
]
