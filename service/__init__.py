"""The scoring side of machine-sound-asd: everything needed to serve exported detectors.

- `service.audio`: decode any libsndfile format to a mono clip at the model's rate.
- `service.features`: the log-mel features, shared with training.
- `service.bundle`: the `threshold.json` schema of an exported model folder.
- `service.detector`: one model folder, checked and ready to score a waveform or an audio file.
- `service.errors`: the one exception tree (`ServiceError` and below), drawn in its docstring.
- `service.main`: the FastAPI app (`create_app`) and the `asd-serve` entry point (`run`).

Importing `service` (or any of these) never imports TensorFlow or the `training` package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("machine-sound-asd")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.1.0"
