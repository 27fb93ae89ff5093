"""Every error the training side raises on purpose, in one tree.

::

    TrainingError
    ├── CliError                 a command line asd-train cannot act on
    ├── DatasetError             a data root that cannot be trained or evaluated on
    ├── SynthError               a bad argument to the synthesiser                      (ValueError)
    ├── ModelConfigError         architecture options that cannot build a model         (ValueError)
    ├── TrainingDivergedError    the loss became NaN or infinite                        (RuntimeError)
    ├── ThresholdError           scores no threshold can honestly be fitted to          (ValueError)
    ├── ExportError              a model that cannot be exported faithfully
    │   └── QuantizationError    an int8 graph that does not score as its fp32 graph does
    ├── CalibrationError         a detector that cannot be recalibrated on these clips
    ├── UndefinedMetricError     labels of one class only: AUC is undefined             (ValueError)
    ├── EvaluationError          an evaluation that cannot run
    │   ├── MissingFolderError   the model folder or the data root does not exist
    │   ├── NoTestDataError      no usable labelled test clips
    │   ├── ModelLoadError       a model folder that is not a loadable detector
    │   └── ClipError            a test clip that cannot be decoded or is too short
    ├── ExploreError             a clip or model that cannot be explored
    └── BenchmarkConfigError     a malformed benchmark option                           (ValueError)

`except TrainingError` catches them all: `asd-train` prints any of them (and
the service's `ServiceError`) as one line on stderr with exit status 2. The
branches marked ValueError or RuntimeError are also those, as they were before
the tree, so callers that catch the built-in type keep working.
"""

from __future__ import annotations


class TrainingError(Exception):
    """The root: anything the training side refuses, with a message for the user."""


class CliError(TrainingError):
    """A user-facing failure of a command: printed as one line, exit status 2."""


class DatasetError(TrainingError):
    """A data root that cannot be trained or evaluated on (missing, empty, no matching clips)."""


class SynthError(TrainingError, ValueError):
    """A bad argument to the synthesiser: unknown machine type or fault, a bad ID, count, seed or level."""


class ModelConfigError(TrainingError, ValueError):
    """Architecture options that cannot build a model (e.g. frames not divisible by the pooling)."""


class TrainingDivergedError(TrainingError, RuntimeError):
    """Training cannot produce a usable model (its loss became NaN or infinite)."""


class ThresholdError(TrainingError, ValueError):
    """Scores that no threshold can honestly be fitted to."""


class ExportError(TrainingError):
    """The model could not be exported faithfully; nothing was written to the output folder."""


class QuantizationError(ExportError):
    """The int8 graph's scores fail the parity gate against the fp32 graph's; nothing was written."""


class CalibrationError(TrainingError):
    """The detector cannot be recalibrated on these recordings; nothing was written."""


class UndefinedMetricError(TrainingError, ValueError):
    """The labels hold one class only, so ROC AUC (and pAUC) are undefined."""


class EvaluationError(TrainingError):
    """An evaluation that cannot run; the message says why, for the user."""


class MissingFolderError(EvaluationError):
    """The model folder or the data root does not exist."""


class NoTestDataError(EvaluationError):
    """The data root holds no usable labelled test clips for the model's machine type and IDs."""


class ModelLoadError(EvaluationError):
    """The model folder exists but is not a loadable detector (see `service.detector.DetectorError`)."""


class ClipError(EvaluationError):
    """A test clip that cannot be decoded or is too short for the model."""


class ExploreError(TrainingError):
    """A clip or model that cannot be explored; the message says why, for the user."""


class BenchmarkConfigError(TrainingError, ValueError):
    """A malformed benchmark option; the message says why."""
