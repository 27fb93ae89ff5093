"""On-site recalibration: refit a detector's thresholds on fresh normal recordings, without retraining.

`recalibrate(model_dir, normal_dir, out)` (`asd-train calibrate`):

1. loads `model_dir` with `service.detector.Detector` (onnxruntime only: no
   TensorFlow on this path, so it runs wherever the service runs);
2. lists the WAVs of `normal_dir` (a plain folder or the DCASE layout
   `<root>/<machine_type>/train/`, `training.dataset.list_clips`); files named
   `anomaly_*` are ignored, unreadable or too-short ones skipped and listed;
3. scores each clip as the service does (`Detector.read`: `read_audio` at
   the model's rate, then `Detector.score`, as `Detector.score_file` does;
   decoded here to count the clips resampled): with its machine ID for that
   ID's threshold and, in a fused model, also without one for the
   model-wide threshold;
4. refits with `training.threshold.calibrate` at quantile 1 - R: with
   `machine_id`, only that ID's own threshold (every clip is taken as that
   ID's); otherwise each ID named in the file names with at least
   `MIN_CLIPS` clips, and the model-wide threshold from all clips;
5. writes `out` atomically (a temporary folder beside it, checked with
   `Detector`, then renamed): `model.onnx` and the model's other files copied
   unchanged, `threshold.json` with the new fits, `scores_from="site"` on a
   refitted model-wide threshold and a `CalibrationEvent` appended to its
   `calibration_history`.

Every refused input raises `CalibrationError` before anything is written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.audio import AudioError, Channel
from service.bundle import THRESHOLD_FILE, Bundle, CalibrationEvent, Threshold, ThresholdFit
from service.detector import Detector, DetectorError, Score, check_finite
from service.features import FeatureError
from training.dataset import Skipped, list_clips, normalize_id, resolve_folder
from training.errors import CalibrationError, DatasetError, ExportError, ThresholdError, TrainingError
from training.folders import check_replaceable, replace_folder
from training.threshold import MIN_ID_CLIPS, calibrate

# The fewest clips `fit` gives an ID its own threshold from: a gamma fit to fewer swings from one
# recording to the next (its 90 % interval spans tens of points), so a site threshold needs as many.
MIN_CLIPS = MIN_ID_CLIPS


@dataclass(frozen=True)
class Refit:
    """One refitted threshold: `machine_id` None is the model-wide one."""

    machine_id: str | None
    old_value: float  # the value these clips were judged by before (an ID without its own: the model-wide)
    had_own: bool  # False: the ID used the model-wide threshold until now
    fit: ThresholdFit
    old_false_alarm_rate: float  # fraction of these clips above old_value

    @property
    def label(self) -> str:
        return "model-wide threshold" if self.machine_id is None else f"ID {self.machine_id} threshold"


@dataclass(frozen=True)
class ScoredClips:
    """The normal clips `score_normal` scored, in order (`paths`, `machine_ids`, `scores` align)."""

    paths: list[Path]
    machine_ids: list[str]
    scores: list[Score]  # each scored as a request naming its machine ID
    wide: list[float]  # each clip's score without an ID (another number only in a fused model)
    skipped: list[Skipped]
    resampled: Counter[int]  # source sample rate -> clips resampled from it

    def values(self) -> np.ndarray:
        """The clip scores with their machine IDs (for the IDs' own thresholds), shape (n,)."""
        return np.asarray([s.score for s in self.scores], dtype=np.float64).reshape(len(self.scores))

    def wide_values(self) -> np.ndarray:
        """The clip scores without an ID (for the model-wide threshold), shape (n,)."""
        return np.asarray(self.wide, dtype=np.float64).reshape(len(self.wide))


@dataclass(frozen=True)
class CalibrationResult:
    folder: Path
    source: Path
    bundle: Bundle
    event: CalibrationEvent
    refits: list[Refit]
    clips_per_id: dict[str, int]
    too_few: dict[str, int]  # IDs found with fewer than MIN_CLIPS clips: not refitted on their own
    resampled: dict[int, int]  # source sample rate -> clips resampled from it
    skipped: list[Skipped] = field(default_factory=list)
    ignored_anomalies: list[Path] = field(default_factory=list)


def recalibrate(
    model_dir: Path,
    normal_dir: Path,
    out: Path,
    *,
    false_alarm_rate: float | None = None,
    machine_id: str | None = None,
    channel: Channel = 0,
    command: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Refit `model_dir`'s threshold(s) on the normal clips of `normal_dir`, write the result to `out`.

    `false_alarm_rate` R defaults to the current target of the threshold being
    replaced (1 - its quantile). See the module doc for which thresholds are refitted.
    """
    model_dir, normal_dir, out = Path(model_dir), Path(normal_dir), Path(out)
    detector = open_detector(model_dir, CalibrationError)
    bundle = detector.bundle
    old = bundle.threshold
    if machine_id is not None:
        machine_id = _known_id(machine_id, bundle)
    quantile, rate = _target(false_alarm_rate, old.for_id(machine_id) if machine_id else old)
    check_out(model_dir, out)

    folder, normal, ignored = normal_clips(normal_dir, bundle)
    if machine_id is None:
        unknown = sorted({mid for _, mid in normal} - set(bundle.machine_ids))
        if unknown:
            raise CalibrationError(
                f"{folder} has clips of machine ID(s) {', '.join(unknown)} (from the file names; a name "
                f"without id_NN is 00), but {model_dir} knows only {', '.join(bundle.machine_ids)}; "
                "name the ID with --machine-id"
            )
    else:
        normal = [(path, machine_id) for path, _ in normal]

    scored = score_normal(detector, normal, channel=channel, progress=progress)
    skipped = scored.skipped
    if not scored.scores:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:3])
        raise CalibrationError(
            f"none of the {len(normal)} normal clips in {folder} could be scored ({reasons})"
        )
    x = scored.values()
    x_wide = scored.wide_values()
    id_array = np.asarray(scored.machine_ids)
    clips_per_id = dict(sorted(Counter(scored.machine_ids).items()))

    targets: list[str | None] = [mid for mid, n in clips_per_id.items() if n >= MIN_CLIPS]
    too_few = {mid: n for mid, n in clips_per_id.items() if n < MIN_CLIPS}
    if machine_id is None:
        if x.size < MIN_CLIPS:
            raise CalibrationError(_too_few_message(x.size, "the model-wide threshold", folder, skipped))
        targets.insert(0, None)
    elif too_few:
        raise CalibrationError(_too_few_message(x.size, f"machine ID {machine_id}", folder, skipped))

    refits = []
    for target in targets:
        chosen = x_wide if target is None else x[id_array == target]
        before = old if target is None else old.for_id(target)
        try:
            fit = calibrate(chosen, quantile=quantile)
        except ThresholdError as error:
            what = "the model-wide threshold" if target is None else f"machine ID {target}"
            raise CalibrationError(f"cannot fit {what} to the clips of {folder}: {error}") from None
        refits.append(
            Refit(
                machine_id=target,
                old_value=before.value,
                had_own=target is None or bool(old.per_id and target in old.per_id),
                fit=fit,
                old_false_alarm_rate=float(np.mean(chosen > before.value)),
            )
        )

    new_bundle, event = _updated(
        bundle,
        refits,
        out=out,
        source=folder,
        n_clips=int(x.size),
        clips_per_id=clips_per_id,
        rate=rate,
        machine_id=machine_id,
        command=command,
    )
    _write(model_dir, out, new_bundle)
    return CalibrationResult(
        folder=out,
        source=folder,
        bundle=new_bundle,
        event=event,
        refits=refits,
        clips_per_id=clips_per_id,
        too_few={} if machine_id else too_few,
        resampled=dict(sorted(scored.resampled.items())),
        skipped=skipped,
        ignored_anomalies=ignored,
    )


def open_detector(model_dir: Path, error: type[TrainingError]) -> Detector:
    """The detector folder loaded, or `error` with the reason (no traceback for a bad folder)."""
    try:
        return Detector(model_dir)
    except DetectorError as failure:
        raise error(str(failure)) from None


def _known_id(raw: str, bundle: Bundle) -> str:
    text = raw.strip()
    # "id_06" as in the file names (and the service's machine_id option) is the same machine as "6".
    text = text[3:] if text.lower().startswith("id_") else text
    try:
        machine_id = normalize_id(text)
    except DatasetError as error:
        raise CalibrationError(str(error)) from None
    if machine_id not in bundle.machine_ids:
        raise CalibrationError(
            f"machine ID {machine_id} is not one of this model's IDs ({', '.join(bundle.machine_ids)})"
        )
    return machine_id


def _target(false_alarm_rate: float | None, current: ThresholdFit) -> tuple[float, float]:
    """(quantile, false-alarm rate) of the new fits."""
    if false_alarm_rate is None:
        # Keep the stored quantile exactly; the rate is rounded only for the record (0.1, not 0.0999...).
        return current.quantile, round(1.0 - current.quantile, 12)
    if not 0.0 < false_alarm_rate < 1.0:
        raise CalibrationError(
            f"the false-alarm rate must be between 0 and 1 (exclusive), got {false_alarm_rate}"
        )
    return 1.0 - false_alarm_rate, false_alarm_rate


def check_out(model_dir: Path, out: Path) -> None:
    """CalibrationError unless `out` may be written from `model_dir`: itself, or a folder outside it."""
    target, source = out.resolve(), model_dir.resolve()
    if target != source and target.is_relative_to(source):
        # The temporary copy would sit inside the folder being copied.
        raise CalibrationError(f"--out {out} is inside the model folder {model_dir}; choose another --out")
    try:
        check_replaceable(out)
    except ExportError as error:
        raise CalibrationError(str(error)) from None


def normal_clips(normal_dir: Path, bundle: Bundle) -> tuple[Path, list[tuple[Path, str]], list[Path]]:
    """(folder listed, [(path, ID from its name)] of the normal clips, anomaly_* files ignored)."""
    try:
        folder = resolve_folder(normal_dir, machine_type=bundle.machine_type, split="train")
        files = list_clips(normal_dir, machine_type=bundle.machine_type, split="train")
    except DatasetError as error:
        raise CalibrationError(str(error)) from None
    ignored = [f.path for f in files if f.label == "anomaly"]
    normal = [(f.path, f.machine_id) for f in files if f.label != "anomaly"]
    if not normal:
        raise CalibrationError(
            f"{folder} holds only anomaly_* files ({len(ignored)}); recalibration needs normal recordings"
        )
    return folder, normal, ignored


def score_normal(
    detector: Detector,
    clips: list[tuple[Path, str]],
    *,
    channel: Channel,
    progress: Callable[[int], None] | None,
) -> ScoredClips:
    """The deployed path per clip (`Detector.score_file`'s steps), skipping and listing bad files.

    Not `score_file` itself: the report counts the clips resampled, which takes the decoded clip,
    and lists each skipped file by name beside a reason that does not repeat its path. Each clip
    is scored with its machine ID, as the service scores a request naming it; a fused model's
    model-wide score (its model-wide envelope entry) is recombined from the same patch errors.
    """
    rate = detector.params.sample_rate
    fused = detector.scoring is not None and detector.scoring.fused
    scored = ScoredClips(paths=[], machine_ids=[], scores=[], wide=[], skipped=[], resampled=Counter())
    for path, machine_id in clips:
        try:
            clip = detector.read(path, channel=channel)
            score = check_finite(detector.score(clip.samples, machine_id=machine_id))
        except (AudioError, FeatureError, OSError) as error:
            scored.skipped.append(Skipped(path=path, reason=str(error)))
        else:
            if fused:
                assert score.band_db is not None  # every Score carries the bands
                wide = detector.combine(
                    score.patch_errors, score.band_db, spectrum_db=score.spectrum_db
                ).score
            else:
                wide = score.score
            scored.paths.append(path)
            scored.machine_ids.append(machine_id)
            scored.scores.append(score)
            scored.wide.append(wide)
            if clip.source_sample_rate != rate:
                scored.resampled[clip.source_sample_rate] += 1
        if progress is not None:
            progress(1)
    return scored


def _too_few_message(n: int, what: str, folder: Path, skipped: list[Skipped]) -> str:
    unread = f" ({len(skipped)} more could not be read)" if skipped else ""
    return (
        f"{n} usable normal clip(s) for {what} in {folder}{unread}; at least {MIN_CLIPS} are needed "
        "to refit a threshold"
    )


def _updated(
    bundle: Bundle,
    refits: list[Refit],
    *,
    out: Path,
    source: Path,
    n_clips: int,
    clips_per_id: dict[str, int],
    rate: float,
    machine_id: str | None,
    command: str | None,
) -> tuple[Bundle, CalibrationEvent]:
    old = bundle.threshold
    per_id = dict(old.per_id or {})
    wide: ThresholdFit | None = None
    for refit in refits:
        if refit.machine_id is None:
            wide = refit.fit
        else:
            per_id[refit.machine_id] = refit.fit
    event = CalibrationEvent(
        at=datetime.now(UTC),
        source=str(source.resolve()),
        n_clips=n_clips,
        clips_per_id=clips_per_id,
        false_alarm_rate=rate,
        machine_id=machine_id,
        old_value=old.value,
        new_value=old.value if wide is None else wide.value,
        per_id={
            r.machine_id: (r.old_value if r.had_own else None, r.fit.value)
            for r in refits
            if r.machine_id is not None
        }
        or None,
        command=command,
    )
    fields = old.model_dump()
    if wide is not None:
        # The fit's own fields replace the old model-wide ones; folds described a cross-fit, now gone.
        fields.update(wide.model_dump(), scores_from="site", folds=None)
    fields.update(
        per_id={k: v.model_dump() for k, v in per_id.items()} or None,
        calibration_history=[*old.model_dump()["calibration_history"], event.model_dump()],
    )
    threshold = Threshold.model_validate(fields)
    data = bundle.model_dump()
    data.update(name=out.name, threshold=threshold.model_dump())
    return Bundle.model_validate(data), event


def _write(model_dir: Path, out: Path, bundle: Bundle) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        for item in model_dir.iterdir():
            if item.name == THRESHOLD_FILE:
                continue
            if item.is_dir():
                shutil.copytree(item, work / item.name)
            else:
                shutil.copy2(item, work / item.name)
        bundle.write(work)
        try:
            Detector(work)  # as the service will load it: the copied graph's hash, the new schema
        except DetectorError as error:
            raise CalibrationError(f"the recalibrated folder does not load: {error}") from None
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _percent(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def format_summary(result: CalibrationResult) -> str:
    """What `asd-train calibrate` prints: the clips used and each threshold's change and precision."""
    event = result.event
    per_id = ", ".join(f"{mid}: {n}" for mid, n in result.clips_per_id.items())
    lines = [
        f"{event.n_clips} normal clips from {result.source} (per ID {per_id}); "
        f"target false-alarm rate {_percent(event.false_alarm_rate)}"
    ]
    target_rate = result.bundle.features.sample_rate
    for source_rate, n in result.resampled.items():
        lines.append(
            f"{_count(n, 'clip')} at {source_rate} Hz {'was' if n == 1 else 'were'} resampled "
            f"to {target_rate} Hz"
        )
    if result.ignored_anomalies:
        ignored = _count(len(result.ignored_anomalies), "anomaly_* file")
        lines.append(f"ignored {ignored}: not normal recordings")
    if result.skipped:
        lines.append(f"skipped {_count(len(result.skipped), 'file')} that could not be scored:")
        lines.extend(f"  {s.path.name}: {s.reason}" for s in result.skipped)
    for mid, n in result.too_few.items():
        lines.append(
            f"ID {mid}: {_count(n, 'clip')}, fewer than {MIN_CLIPS}: its own threshold was not refitted"
        )
    if event.machine_id is None:
        per_id_fits = result.bundle.threshold.per_id or {}
        absent = [
            m for m in result.bundle.machine_ids if m not in result.clips_per_id and m not in per_id_fits
        ]
        if absent:
            # Their fallback moved although none of their recordings was heard.
            lines.append(
                f"ID(s) {', '.join(absent)} had no clips here and no threshold of their own: "
                "they now use the model-wide threshold refitted on the other IDs' clips"
            )
    for refit in result.refits:
        fit = refit.fit
        was = "" if refit.had_own else " (the model-wide one it used)"
        lines.append(
            f"{refit.label} ({fit.n_calibration_clips} clips): {refit.old_value:.6g}{was} -> {fit.value:.6g}"
        )
        lines.append(
            f"  false alarms on these clips: {_percent(refit.old_false_alarm_rate)} with the old "
            f"threshold, {_percent(fit.empirical_false_alarm_rate)} with the new"
        )
        if fit.false_alarm_interval is not None:
            lo, hi = fit.false_alarm_interval
            more = (fit.clips_for_3_points or fit.n_calibration_clips) - fit.n_calibration_clips
            precision = f"{more} more clips would reach +/- 3 points" if more > 0 else "within +/- 3 points"
            lines.append(
                f"  on new normal clips: {_percent(lo)} to {_percent(hi)} (90 % interval); {precision}"
            )
    lines.append(f"wrote {result.folder}")
    return "\n".join(lines)
