"""Every error the service's scoring core raises, in one tree.

::

    ServiceError
    ├── AudioError                          a recording that cannot be scored          (ValueError)
    │   ├── UndecodableAudioError           not audio libsndfile can read, corrupt, no such file
    │   ├── EmptyAudioError                 decodes to zero samples
    │   ├── InvalidAudioError               NaN/inf samples, too many channels, odd sample rate
    │   │   └── InvalidChannelError         the requested channel does not exist in the audio
    │   └── AudioLengthError                shorter or longer than the caller allows
    │       ├── AudioTooShortError          shorter than the caller's minimum
    │       │   └── ClipTooShortError       too short for one patch of the model
    │       └── AudioTooLongError           longer than the caller's maximum
    ├── FeatureError                        parameters or a signal log-mel cannot take (ValueError)
    ├── DetectorError                       a detector folder that cannot be served
    │   └── ReloadInProgressError           a reload asked for while another one runs
    └── ThresholdChoiceError                no threshold for the machine ID or rate    (ValueError)
        ├── UnknownMachineIdError           an ID the model was not trained on
        └── FalseAlarmRateUnavailableError  the fit gives no threshold for the rate

`except ServiceError` catches them all; `except AudioError` everything a bad
recording can cause, a clip too short for the model included. The branches
marked ValueError are also ValueErrors: they are bad values, and pydantic
turns a ValueError raised while validating a bundle into a validation error.

Audio and threshold-choice errors carry a stable `code`, the one the API
answers with (`service.api.errors.audio_error`: 400 for audio the service
cannot use, 422 for a length or channel that does not fit; 422 for a threshold
choice). The module that raises each branch re-exports it (`service.audio`,
`service.features`, `service.detector`, `service.scoring`).

The HTTP layer's `service.api.errors.ApiError` is not in this tree: it is an
answer (a status, a code, a message) that the routes build from these errors,
and the scoring core, which training runs too, never raises or imports it.
"""

from __future__ import annotations


class ServiceError(Exception):
    """The root: anything the service's scoring core refuses."""


class AudioError(ServiceError, ValueError):
    """A recording that cannot be scored; `code` is the API's error code."""

    code = "invalid_audio"


class UndecodableAudioError(AudioError):
    code = "undecodable_audio"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class InvalidAudioError(AudioError):
    code = "invalid_audio"


class InvalidChannelError(InvalidAudioError):
    """The audio is fine but has no such channel: the caller asked for the wrong one."""

    code = "invalid_channel"


class AudioLengthError(AudioError):
    code = "audio_length"


class AudioTooShortError(AudioLengthError):
    code = "audio_too_short"


class ClipTooShortError(AudioTooShortError):
    """Fewer samples than one patch of the model needs (`Detector.min_samples`)."""


class AudioTooLongError(AudioLengthError):
    code = "audio_too_long"


class FeatureError(ServiceError, ValueError):
    """Feature parameters or an input signal that log-mel cannot work with."""


class DetectorError(ServiceError):
    """A detector folder that cannot be served (missing files, hash or shape mismatch)."""


class ReloadInProgressError(DetectorError):
    """A reload of the models folder was asked for while another one runs (the API answers 409)."""


class ThresholdChoiceError(ServiceError, ValueError):
    """A machine ID or false-alarm rate the model has no threshold for (the API answers 422)."""

    code = "invalid_threshold_choice"


class UnknownMachineIdError(ThresholdChoiceError):
    code = "unknown_machine_id"


class FalseAlarmRateUnavailableError(ThresholdChoiceError):
    code = "false_alarm_rate_unavailable"
