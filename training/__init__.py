"""Training side of the anomalous-sound detector (needs the `train` extra: TensorFlow, tf2onnx, ...).

Modules, one job each:

* `training.errors`: the one exception tree (`TrainingError` and its branches);
* `training.dataset`: find WAVs in the DCASE 2020 Task 2 layout or a plain
  folder, parse machine IDs and labels from names, decode through
  `service.audio`, log-mel through `service.features`, validation split,
  per-mel-bin standardisation, patches;
* `training.model`: the convolutional autoencoder and the DCASE 2020 dense baseline;
* `training.fit_options`: `FitOptions`, the per-architecture defaults and their checks;
* `training.fit`: `run_fit`, the whole fit (features, training, export);
  `training.fit_summary`: its summary;
* `training.crossfit`: the exported model's training and its calibration
  scores, by a holdout or a k-fold cross-fit;
* `training.train`: `train_keras`, the training loop;
* `training.threshold`: the gamma-quantile decision threshold;
* `training.export`: the detector folder: calibration through
  `service.detector.Detector`, thresholds, `threshold.json`;
  `training.onnx_export`: ONNX conversion (one Resize per up-sampling, static shapes but the
  batch) checked against Keras;
  `training.fusion`: the envelope scorer and its fusion with the CAE;
  `training.folders`: atomic replacement of a model folder;
* `training.calibrate`: `asd-train calibrate`, on-site recalibration without TensorFlow;
* `training.quantize`: int8 graphs behind a parity gate, for `fit --precision int8` and
  `asd-train quantize` (an existing folder, thresholds refitted by `training.calibrate`);
* `training.evaluate`: `score_files`, scores as the deployed service computes them;
* `training.clip_scores`, `training.metrics`, `training.report`, `training.report_output`,
  `training.plots`, `training.evaluate_command`: `asd-train evaluate` (test clips scored,
  AUC, pAUC, precision/recall/F1, confusion, report.json, DCASE CSVs, figures, `--compare`);
* `training.explore`: `asd-train explore` figures of clips and of a model's reconstruction;
* `training.benchmark` (the grid), `training.benchmark_data`, `training.benchmark_fit`,
  `training.benchmark_run`, `training.benchmark_report`: `asd-train benchmark`, QUALITY.md;
* `training.synth`: synthetic DCASE-layout data;
* `training.options`: argument types shared by the subcommands;
* `training.cli`: the `asd-train` command (`synth`, `fit`, `calibrate`, `quantize`,
  `benchmark`, `evaluate`, `explore`); library modules never import it.

The service never imports this package; this package imports the service's
audio, feature, bundle and detector code, so both sides share one implementation.
"""

import os

# TensorFlow enables its oneDNN kernels by default only on some CPUs; on the
# project's 2-core AVX2 reference machine they were off and turning them on
# made a CAE training step about 1.3x faster (models/README.md, "Training
# speed"). It must be set before TensorFlow's import; a user's setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
