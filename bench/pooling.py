"""`python -m bench.pooling WORK`: how each patch pooling would score the quality benchmark's cells.

Pooling (mean, max, top-k mean, GWRP; `service.scorers.pool`) changes only how a fitted
model's patch errors become the clip score, not the training. So for every CAE detector
folder that `asd-train benchmark --work WORK` fitted with a holdout calibration, this scores
the folder's own held-out validation clips (`training.validation_files` in threshold.json)
and the data set's test clips once through `Detector.score_file`, then pools the patch errors
each way. For a fused folder (`--scorer cae+envelope`) the CAE's per-ID standardisation is
recomputed from the validation clips' pooled scores, as `fit --pooling P` computes it; the
envelope scorer does not depend on pooling. That gives the AUC and pAUC per machine ID that
a fit with that pooling would have, without refitting. A built-in check: with the folder's own
pooling the recomputed standardisation must match the stored one.

Prints one table (mean AUC / pAUC over the IDs, per data set and detector) and writes every
number as JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.detector import Detector
from service.scorers import DEFAULT_POOLING_PARAM, fuse, pool
from training.clip_scores import find_test_clips
from training.dataset import parse_name
from training.fusion import standardisation
from training.metrics import detection_metrics

POOLINGS: tuple[tuple[str, float | None], ...] = (
    ("mean", None),
    ("max", None),
    ("topk", DEFAULT_POOLING_PARAM["topk"]),
    ("gwrp", DEFAULT_POOLING_PARAM["gwrp"]),
)


@dataclass(frozen=True)
class Clip:
    machine_id: str
    label: int  # 0 normal, 1 anomalous; validation clips are 0
    patch_errors: np.ndarray
    envelope_z: float | None  # the fused folder's standardised envelope score, per-ID entry


def _label(pooling: str, param: float | None) -> str:
    return pooling if param is None else f"{pooling} {param:g}"


def _score(detector: Detector, path: Path, machine_id: str, label: int) -> Clip:
    scored = detector.score_file(path, machine_id=machine_id)
    envelope_z = None
    scoring = detector.scoring
    if scoring is not None and scoring.fused:
        assert scored.components is not None
        _, entry = scoring.entry_for(machine_id)
        assert entry is not None
        stats = entry.standardisation["envelope"]
        envelope_z = (scored.components["envelope"] - stats.mean) / stats.std
    return Clip(machine_id, label, np.asarray(scored.patch_errors, dtype=np.float64), envelope_z)


def _clip_scores(
    clips: Sequence[Clip], validation: Sequence[Clip], pooling: str, param: float | None
) -> np.ndarray:
    pooled = np.array([pool(c.patch_errors, pooling=pooling, param=param) for c in clips])
    if clips[0].envelope_z is None:
        return pooled
    cae = standardisation(np.array([pool(c.patch_errors, pooling=pooling, param=param) for c in validation]))
    z_env = np.array([c.envelope_z for c in clips], dtype=np.float64)
    return np.asarray(fuse([(pooled - cae.mean) / cae.std, z_env]))


def study_folder(folder: Path, work: Path) -> dict[str, object]:
    """Per pooling and machine ID, AUC and pAUC of one detector folder; see the module docstring."""
    meta = json.loads((folder / "threshold.json").read_text(encoding="utf-8"))
    training = meta["training"]
    if meta["threshold"].get("scores_from") != "holdout":
        raise ValueError(f"{folder}: calibrated by {meta['threshold'].get('scores_from')}, not a holdout")
    data_root = work / training["data_root"]
    machine_type = meta["machine_type"]
    detector = Detector(folder, intra_op_threads=1)
    train_dir = data_root / machine_type / "train"
    validation = [
        _score(detector, train_dir / name, parse_name(name).machine_id, 0)
        for name in training["validation_files"]
    ]
    tests = [
        _score(detector, path, machine_id, label)
        for machine_id, clips in find_test_clips(data_root, machine_type).items()
        for path, label in clips
    ]
    results: dict[str, object] = {}
    for pooling, param in POOLINGS:
        per_id: dict[str, dict[str, float]] = {}
        for machine_id in sorted({c.machine_id for c in tests}):
            id_tests = [c for c in tests if c.machine_id == machine_id]
            id_validation = [c for c in validation if c.machine_id == machine_id]
            scores = _clip_scores(id_tests, id_validation, pooling, param)
            metrics = detection_metrics([c.label for c in id_tests], scores, threshold=float("inf"))
            per_id[machine_id] = {"auc": float(metrics["auc"]), "pauc": float(metrics["pauc"])}
        results[_label(pooling, param)] = per_id
    _check_own_pooling(meta, validation)
    return {"folder": str(folder), "per_pooling": results}


def _check_own_pooling(meta: dict[str, object], validation: Sequence[Clip]) -> None:
    """With the folder's own pooling, the recomputed CAE standardisation equals the stored one."""
    scoring = meta.get("scoring")
    if not isinstance(scoring, dict) or not scoring.get("per_id"):
        return
    pooling, param = scoring["pooling"], scoring["pooling_param"]
    for machine_id, entry in scoring["per_id"].items():
        ours = standardisation(
            np.array(
                [
                    pool(c.patch_errors, pooling=pooling, param=param)
                    for c in validation
                    if c.machine_id == machine_id
                ]
            )
        )
        stored = entry["standardisation"]["cae"]
        if not np.isclose(ours.mean, stored["mean"], rtol=1e-4) or not np.isclose(
            ours.std, stored["std"], rtol=1e-3
        ):
            raise ValueError(
                f"ID {machine_id}: recomputed CAE standardisation {ours.mean:.6g} / {ours.std:.6g} "
                f"differs from the stored {stored['mean']:.6g} / {stored['std']:.6g}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pooling", description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="an `asd-train benchmark --work` folder")
    parser.add_argument(
        "--detectors", default="cae,cae-env", help="detector names of the cells (cae,cae-env)"
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    names = [n for n in args.detectors.split(",") if n]
    folders = sorted(
        f
        for f in args.work.glob("fits/*/*/*_fit*")
        if f.is_dir() and (f / "threshold.json").is_file() and f.name.rsplit("_fit", 1)[0] in names
    )
    if not folders:
        print(f"bench.pooling: error: no detector folders {names} under {args.work}/fits", file=sys.stderr)
        return 2
    everything = []
    labels = [_label(p, x) for p, x in POOLINGS]
    print("| data set | detector | " + " | ".join(labels) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in labels) + " |")
    for folder in folders:
        try:
            result = study_folder(folder, args.work)
        except (ValueError, OSError) as error:
            print(f"bench.pooling: {folder}: skipped: {error}", file=sys.stderr)
            continue
        everything.append(result)
        cells = []
        per_pooling = result["per_pooling"]
        assert isinstance(per_pooling, dict)
        for label in labels:
            per_id = per_pooling[label]
            auc = np.mean([m["auc"] for m in per_id.values()])
            pauc = np.mean([m["pauc"] for m in per_id.values()])
            cells.append(f"{auc:.3f} / {pauc:.3f}")
        print(f"| {folder.parent.name} | {folder.name} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
