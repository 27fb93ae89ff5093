"""Input checks: does an upload look like the audio the model learned from?

A reconstruction score cannot tell a fault from a changed microphone: a
preamp set 10 dB hotter makes every clip "anomalous". So beside the decision
the service reports how the clip's level, clipping, silence, DC offset and
bandwidth compare with the training audio's `Fingerprint` (stored in
threshold.json at fit time). The decision is still given: a louder machine
may be the fault itself.

Both sides use this module: training builds the fingerprint from the
`ClipStats` of its clips, the service computes the same `ClipStats` for an
upload and `check`s them against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FindingCode = Literal["level_offset", "clipping", "silence", "dc_offset", "band_limited"]
FINDING_CODES: tuple[FindingCode, ...] = ("level_offset", "clipping", "silence", "dc_offset", "band_limited")


@dataclass(frozen=True)
class ClipStats:
    """What one clip looks like, before any standardisation.

    `band_db` has shape (n_mels,): the clip's mean log-mel level per mel band
    in dB, on the features' own scale (`service.features.log_mel`).
    """

    level_db: float
    band_db: np.ndarray
    clipping_rate: float
    silence_fraction: float
    dc_offset: float
    bandwidth_hz: float


def clip_stats(samples: np.ndarray, band_db: np.ndarray, *, sample_rate: int, mel_hz: np.ndarray) -> ClipStats:
    """Stats of a mono waveform `samples` (float, full scale 1.0) and its mean log-mel per band.

    `mel_hz` (n_mels,) is each mel band's centre frequency, for `bandwidth_hz`.
    """
    raise NotImplementedError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FingerprintPart(_Strict):
    """The training clips' stats (of one machine ID, or of all)."""

    n_clips: int = Field(gt=0)
    level_db: tuple[float, float] = Field(description="Mean and standard deviation of the clips' level, dB FS.")
    band_db: list[float] = Field(description="Mean level per mel band, dB.")
    clipping_rate: float = Field(ge=0, le=1, description="Highest fraction of clipped samples in a clip.")
    silence_fraction: float = Field(ge=0, le=1, description="Highest fraction of silent windows in a clip.")
    dc_offset: float = Field(ge=0, description="Highest |mean| of a clip, full scale 1.0.")
    bandwidth_hz: float = Field(ge=0, description="Lowest bandwidth of a clip.")


class Fingerprint(FingerprintPart):
    """The training audio as a whole, and each machine ID's own part."""

    per_id: dict[str, FingerprintPart] | None = None

    def for_id(self, machine_id: str | None) -> FingerprintPart:
        if machine_id is not None and self.per_id and machine_id in self.per_id:
            return self.per_id[machine_id]
        return self


def build_fingerprint(stats: Sequence[ClipStats], machine_ids: Sequence[str]) -> Fingerprint:
    """The fingerprint of training clips: `stats[i]` belongs to machine ID `machine_ids[i]`."""
    raise NotImplementedError


class Finding(_Strict):
    code: FindingCode
    message: str = Field(description="What was found and what it may mean, for a person.")
    value: float = Field(description="The measured quantity, e.g. dB away from the training level.")


class InputCheck(_Strict):
    status: Literal["ok", "warning"] = Field(description="`warning` when there is at least one finding.")
    findings: list[Finding] = Field(default_factory=list)


@dataclass(frozen=True)
class CheckLimits:
    """Where a difference becomes a finding (`ASD_LEVEL_OFFSET_DB` sets the first)."""

    level_offset_db: float = 6.0


def check(
    stats: ClipStats, fingerprint: Fingerprint, *, machine_id: str | None = None, limits: CheckLimits = CheckLimits()
) -> InputCheck:
    """Compare one clip with the training audio (of `machine_id` when the fingerprint has it)."""
    raise NotImplementedError
