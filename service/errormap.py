"""The error map of an answer (`detail=map`): where in time and frequency the reconstruction fails.

`Detector.score(error_map=True)` gives the squared error per mel bin and frame
and the log-mel in dB; a 10 s clip has 128 x 313 of each. An answer carries
them as block means on a grid of at most `MAX_ROWS` x `MAX_COLUMNS` cells,
rounded to `DIGITS` significant digits (enough for a picture, and the JSON
stays near 100 kB; levels in tenths of a dB), with the region of the highest mean error marked.
"""

from __future__ import annotations

import numpy as np

from service.detector import Score
from service.schemas import ErrorMap, MapRegion

__all__ = ["DIGITS", "MAX_COLUMNS", "MAX_ROWS", "block_means", "error_map", "round_significant"]

MAX_ROWS = 64
MAX_COLUMNS = 128
DIGITS = 3
# The marked region: an eighth of the mel rows by about a second.
REGION_ROW_FRACTION = 1 / 8
REGION_SECONDS = 1.0


def block_edges(n: int, most: int) -> np.ndarray:
    """Edges of at most `most` blocks of near-equal size over `n` items, shape (n_blocks + 1,)."""
    if n <= most:
        return np.arange(n + 1)
    return np.round(np.linspace(0, n, most + 1)).astype(np.int64)


def _block_sums(values: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    sizes = np.diff(edges)
    if values.shape[axis] == edges[-1] and (sizes == sizes[0]).all():
        # Equal blocks (128 mel bins in 64 rows): a reshape, much cheaper than reduceat.
        shape = list(values.shape)
        shape[axis : axis + 1] = [len(sizes), int(sizes[0])]
        return np.asarray(values.reshape(shape).sum(axis=axis + 1))
    return np.add.reduceat(values, edges[:-1], axis=axis)


def block_means(values: np.ndarray, row_edges: np.ndarray, column_edges: np.ndarray) -> np.ndarray:
    """Mean of each block over the last two axes, shape (..., len(row_edges) - 1, len(column_edges) - 1)."""
    sums = _block_sums(_block_sums(values, row_edges, values.ndim - 2), column_edges, values.ndim - 1)
    sizes = np.outer(np.diff(row_edges), np.diff(column_edges)).astype(sums.dtype)
    return np.asarray(sums / sizes)


# Powers of ten from a lookup: `10.0 ** k` per element is the slow part of rounding.
_POWERS = 10.0 ** np.arange(-40, 41)


def round_significant(values: np.ndarray, digits: int = DIGITS) -> np.ndarray:
    """`values` rounded to `digits` significant digits (zeros stay zero), float64."""
    values = np.asarray(values, dtype=np.float64)
    size = np.abs(values)
    magnitude = np.floor(np.log10(size, where=size > 0, out=np.zeros_like(values)))
    places = np.clip(digits - 1 - magnitude, -40, 40).astype(np.int64)
    # Dividing by an exact power of ten (rather than multiplying by 10**-k) gives the
    # double nearest the decimal, so the JSON shows "0.123", not "0.12300000000000001".
    up = _POWERS[np.maximum(places, 0) + 40]
    down = _POWERS[np.maximum(-places, 0) + 40]
    return np.asarray(np.round(values * up / down) * down / up)


def worst_region(errors: np.ndarray, *, rows: int, columns: int) -> tuple[int, int, float]:
    """Top-left cell (row, column) of the `rows` x `columns` box with the highest mean, and that mean."""
    # A summed-area table gives every box's sum at once.
    table = np.zeros((errors.shape[0] + 1, errors.shape[1] + 1))
    table[1:, 1:] = errors.cumsum(axis=0).cumsum(axis=1)
    boxes = (
        table[rows:, columns:] - table[:-rows, columns:] - table[rows:, :-columns] + table[:-rows, :-columns]
    )
    row, column = np.unravel_index(int(np.argmax(boxes)), boxes.shape)
    return int(row), int(column), float(boxes[row, column] / (rows * columns))


def error_map(
    scored: Score,
    *,
    mel_hz: np.ndarray,
    seconds_per_frame: float,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
) -> ErrorMap:
    """The map of a clip scored with `error_map=True`; `mel_hz` is each mel bin's centre, shape (n_mels,)."""
    if scored.error_map is None or scored.log_mel is None:
        raise ValueError("the score has no error map: score with error_map=True")
    errors = scored.error_map
    n_mels, n_frames = errors.shape
    rows = block_edges(n_mels, max_rows)
    columns = block_edges(n_frames, max_columns)
    # Both pictures on one grid, reduced and rounded together: the log-mel cropped to the
    # frames the errors cover.
    # float32 sums of a few cells are exact enough for 3 digits; rounding works in float64.
    both = np.stack([errors, scored.log_mel[:, :n_frames]])
    cells = block_means(both, rows, columns)
    error_cells = cells[0]
    row_hz = _block_sums(np.asarray(mel_hz, dtype=np.float64), rows, 0) / np.diff(rows)
    # Patch times' convention (Score.patch_end): frame edges, the last one cut at the clip's end.
    column_edges_s = np.minimum(columns * seconds_per_frame, float(scored.patch_end[-1]))

    n_rows, n_columns = error_cells.shape
    box_rows = max(1, min(n_rows, round(n_rows * REGION_ROW_FRACTION)))
    column_s = float(column_edges_s[-1]) / n_columns
    box_columns = max(1, min(n_columns, round(REGION_SECONDS / column_s)))
    row, column, mean = worst_region(error_cells, rows=box_rows, columns=box_columns)
    region = MapRegion(
        row_start=row,
        row_end=row + box_rows,
        column_start=column,
        column_end=column + box_columns,
        start_s=round(float(column_edges_s[column]), 6),
        end_s=round(float(column_edges_s[column + box_columns]), 6),
        low_hz=round(float(row_hz[row]), 1),
        high_hz=round(float(row_hz[row + box_rows - 1]), 1),
        error=float(round_significant(np.asarray(mean))),
    )
    error_grid = round_significant(cells[0]).tolist()
    # Levels span no decades: tenths of a dB are 3 significant digits from 10 dB on, at half the cost.
    level_grid = np.round(cells[1].astype(np.float64), 1).tolist()
    # model_construct: these lists of Python floats are built here to the schema; validating
    # 16,000 numbers again would cost more than making them.
    return ErrorMap.model_construct(
        n_rows=n_rows,
        n_columns=n_columns,
        row_hz=np.round(row_hz, 1).tolist(),
        column_edges_s=np.round(column_edges_s, 6).tolist(),
        log_mel_db=level_grid,
        errors=error_grid,
        worst=region,
    )
