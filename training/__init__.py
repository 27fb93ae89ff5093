"""Training side of the anomalous-sound detector (needs the `train` extra: TensorFlow, tf2onnx, ...).

Modules, one job each:

* `training.dataset`: find WAVs in the DCASE 2020 Task 2 layout or a plain
  folder, parse machine IDs and labels from names, decode through
  `service.audio`, log-mel through `service.features`, validation split,
  per-mel-bin standardisation, patches;
* `training.model`: the convolutional autoencoder and the DCASE 2020 dense baseline;
* `training.train`: `run_fit`, the whole fit (features, training, export) and its summary;
* `training.threshold`: the gamma-quantile decision threshold;
* `training.export`: ONNX export checked against Keras, calibration through
  `service.detector.Detector`, `threshold.json`, atomic replacement of the model folder;
* `training.evaluate`: `score_files`, scores as the deployed service computes them;
* `training.metrics`, `training.report`, `training.plots`: `asd-train evaluate` (AUC, pAUC,
  precision/recall/F1, confusion, report.json, DCASE CSVs, figures, `--compare`);
* `training.explore`: `asd-train explore` figures of clips and of a model's reconstruction;
* `training.synth`: synthetic DCASE-layout data;
* `training.cli`: the `asd-train` command (`synth`, `fit`, `evaluate`, `explore`).

The service never imports this package; this package imports the service's
audio, feature, bundle and detector code, so both sides share one implementation.
"""

import os

# TensorFlow enables its oneDNN kernels by default only on some CPUs; on the
# project's 2-core AVX2 reference machine they were off and turning them on
# made a CAE training step about 1.3x faster (models/README.md, "Training
# speed"). It must be set before TensorFlow's import; a user's setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
