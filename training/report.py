"""Evaluation of exported detectors on DCASE-layout test clips, and its report.

`evaluate_model` scores every labelled test clip of a model's machine type
through `service.detector.Detector` (the code the service runs, on the
exported ONNX graph; `training.clip_scores`), then:

* `build_report` computes per machine ID and on average: ROC AUC, pAUC
  (`roc_auc_score(y, s, max_fpr=0.1)`, as the DCASE evaluator), and the
  precision, recall, F1 and confusion matrix of the decisions at the
  model's threshold (see `training.metrics` for the conventions);
* `training.report_output` prints it (`print_table`) and writes
  ``report.json``, the DCASE baseline's CSVs and PNG figures (`write_report`).

With a second model (``compare``) both detectors score the same clips; the
report keeps the single-model shape at its top level and nests the other
model, in the same shape, under ``"compare"``::

    {"model": "slider", "machine_type": "slider", "threshold": 1.23,
     "ids": {"00": {"auc": .., "pauc": .., "precision": .., "recall": .., "f1": ..,
                    "tp": .., "fp": .., "tn": .., "fn": .., "n_normal": .., "n_anomaly": ..}, ...},
     "mean": {"auc": .., "pauc": .., "precision": .., "recall": .., "f1": ..},
     "compare": {"model": "slider-dense", "machine_type": "slider", "threshold": ..,
                 "ids": {..}, "mean": {..}}}

The files it writes are listed in `training.report_output`.

A test folder written by `training.synth` names each anomalous clip's fault
in ``anomaly_kinds.csv`` (``file,machine_id,kind,severity``). Then every
section of the report also has ``"kinds"``: per ID and fault kind, the AUC
of that kind's clips against all normal clips of the ID, and the mean over
IDs (`kind_aucs`); the table gets a second part with them.

Errors a user can cause derive from `EvaluationError`;
`training.evaluate_command.run_evaluate` turns them into a message on stderr
and exit status 2 (as every `asd-train` usage error).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from service.audio import Channel
from training import dataset
from training.clip_scores import ModelScores, find_test_clips, load_detector, score_clips, select_ids
from training.errors import (
    DatasetError,
    EvaluationError,
    MissingFolderError,
    NoTestDataError,
    UndefinedMetricError,
)
from training.metrics import (
    MAX_FPR,
    detection_metrics,
    mean_metrics,
)
from training.report_output import model_sections, write_report
from training.synth import ANOMALY_KINDS_FILE


def _model_section(scores: ModelScores, *, max_fpr: float) -> dict[str, Any]:
    if not scores.ids:
        raise NoTestDataError(f"{scores.model}: no machine IDs with test clips")
    per_id = {}
    for machine_id, clips in scores.ids.items():
        try:
            per_id[machine_id] = detection_metrics(
                clips.labels, clips.scores, scores.threshold, max_fpr=max_fpr
            )
        except UndefinedMetricError as error:
            raise NoTestDataError(f"{scores.model}, ID {machine_id}: {error}") from None
    return {
        "model": scores.model,
        "machine_type": scores.machine_type,
        "threshold": float(scores.threshold),
        "ids": per_id,
        "mean": mean_metrics(per_id),
    }


def read_anomaly_kinds(test_dir: Path) -> dict[str, str]:
    """File name -> fault kind from the folder's ``anomaly_kinds.csv``; {} when there is none.

    Raises EvaluationError for a file without the ``file`` and ``kind`` columns.
    """
    path = Path(test_dir) / ANOMALY_KINDS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"file", "kind"} <= set(reader.fieldnames or ()):
            raise EvaluationError(
                f"{path}: needs a header with the columns file and kind, got {reader.fieldnames}; "
                f"fix or remove it (it only adds the AUC per fault kind)"
            )
        return {row["file"]: row["kind"] for row in reader if row["file"] and row["kind"]}


def kind_aucs(scores: ModelScores, kinds: Mapping[str, str]) -> dict[str, Any]:
    """AUC of each fault kind's clips against all normal clips of their ID.

    `kinds` maps a clip's file name to its kind (`read_anomaly_kinds`);
    anomalous clips it does not list count as ``"unlisted"``. Returns
    ``{"ids": {id: {kind: {"auc": .., "n_anomaly": ..}}}, "mean": {kind: auc}}``,
    the mean over the IDs that have clips of the kind.
    """
    per_id: dict[str, dict[str, dict[str, Any]]] = {}
    for machine_id, clips in scores.ids.items():
        normal = [s for s, label in zip(clips.scores, clips.labels, strict=True) if label == 0]
        by_kind: dict[str, list[float]] = {}
        for name, score, label in zip(clips.files, clips.scores, clips.labels, strict=True):
            if label == 1:
                by_kind.setdefault(kinds.get(Path(name).name, "unlisted"), []).append(score)
        per_id[machine_id] = {
            kind: {
                "auc": float(roc_auc_score([0] * len(normal) + [1] * len(values), normal + values)),
                "n_anomaly": len(values),
            }
            for kind, values in sorted(by_kind.items())
        }
    names = sorted({kind for row in per_id.values() for kind in row})
    mean = {k: float(np.mean([row[k]["auc"] for row in per_id.values() if k in row])) for k in names}
    return {"ids": per_id, "mean": mean}


def build_report(
    primary: ModelScores, compare: ModelScores | None = None, *, max_fpr: float = MAX_FPR
) -> dict[str, Any]:
    """The report dict of one model, with a second one under ``"compare"`` when given.

    Raises NoTestDataError when an ID lacks normal or anomalous clips (AUC
    would be undefined).
    """
    report = _model_section(primary, max_fpr=max_fpr)
    if compare is not None:
        if compare.model == primary.model:
            raise ValueError(f"both models are named {primary.model!r}; give them distinct names")
        report["compare"] = _model_section(compare, max_fpr=max_fpr)
    return report


def _distinct_name(name: str, taken: str) -> str:
    return name if name != taken else f"{name} (compare)"


def evaluate_model(
    model_dir: str | Path,
    data_root: str | Path,
    *,
    out: str | Path | None = None,
    compare: str | Path | None = None,
    channel: Channel = 0,
    ids: Sequence[str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Score the test clips of a model's machine type and IDs; build (and write) the report.

    Parameters
    ----------
    model_dir : an exported detector folder (model.onnx + threshold.json)
    data_root : DCASE-layout data, ``DATA_ROOT/<machine_type>/test/*.wav``
    out : folder for report.json, CSVs and figures; nothing is written when None
    compare : a second detector folder of the same machine type, scored on the same clips
    channel : channel of multi-channel files (0, as DCASE 2020 took from MIMII), or "mean"
    ids : machine IDs to evaluate; by default all the model was trained on
    progress : show a tqdm progress bar on stderr
    workers : threads scoring clips in parallel (default: up to 4, one per core)

    Returns
    -------
    The report dict (see the module docstring).

    Raises
    ------
    MissingFolderError, NoTestDataError, ModelLoadError, ClipError (all EvaluationError)
    """
    data = Path(data_root)
    if not data.is_dir():
        # Checked before loading the model: a mistyped path should not wait for onnxruntime.
        raise MissingFolderError(f"data folder {data} does not exist")
    detectors = [load_detector(model_dir)]
    if compare is not None:
        other = load_detector(compare)
        if other.bundle.machine_type != detectors[0].bundle.machine_type:
            raise EvaluationError(
                f"cannot compare a {detectors[0].bundle.machine_type!r} model with a "
                f"{other.bundle.machine_type!r} model"
            )
        detectors.append(other)
    machine_type = detectors[0].bundle.machine_type
    try:
        # "6" and "06" name the same ID; DCASE file names use two digits.
        wanted = [dataset.normalize_id(mid) for mid in (ids if ids else detectors[0].bundle.machine_ids)]
    except DatasetError as error:
        raise EvaluationError(str(error)) from None
    if not wanted:
        raise NoTestDataError(f"model {detectors[0].name} lists no machine IDs; choose them with --ids")
    clips = select_ids(find_test_clips(data, machine_type), wanted)

    names = [detectors[0].name]
    if len(detectors) > 1:
        names.append(_distinct_name(detectors[1].name, names[0]))
    results = score_clips(detectors, clips, channel=channel, progress=progress, names=names, workers=workers)
    report = build_report(results[0], results[1] if len(results) > 1 else None)
    kinds = read_anomaly_kinds(next(iter(clips.values()))[0][0].parent)
    if kinds:
        for section, scores in zip(model_sections(report), results, strict=True):
            section["kinds"] = kind_aucs(scores, kinds)
    if out is not None:
        write_report(report, results, out)
    return report
