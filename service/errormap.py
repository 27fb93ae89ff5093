"""The error map of an answer (`detail=map`): where in time and frequency the reconstruction fails.

`Detector.score(error_map=True)` gives the squared error per mel bin and frame
and the log-mel in dB; a 10 s clip has 128 x 313 of each. An answer carries
them as block means on a grid of at most `MAX_ROWS` x `MAX_COLUMNS` cells,
with the region of the highest mean error marked. Each grid travels as its
cells' bytes in `GRID_DTYPE` (little-endian float32, row-major, row 0 the
lowest band), base64url in the JSON (`service.schemas.ErrorMap`): 16,000
numbers written as JSON text would cost the server more than computing the
map, the bytes next to nothing, and float32 keeps every digit the cells have.
"""

from __future__ import annotations

import functools

import numpy as np

from service.detector import Score
from service.schemas import ErrorMap, MapRegion

__all__ = ["GRID_DTYPE", "MAX_COLUMNS", "MAX_ROWS", "block_edges", "block_means", "error_map", "worst_region"]

MAX_ROWS = 64
MAX_COLUMNS = 128
GRID_DTYPE = np.dtype("<f4")
# The marked region: an eighth of the mel rows by about a second.
REGION_ROW_FRACTION = 1 / 8
REGION_SECONDS = 1.0


@functools.lru_cache(maxsize=256)
def block_edges(n: int, most: int) -> np.ndarray:
    """Edges of at most `most` blocks of near-equal size over `n` items, shape (n_blocks + 1,), read-only."""
    edges = np.arange(n + 1) if n <= most else np.round(np.linspace(0, n, most + 1)).astype(np.int64)
    edges.setflags(write=False)  # cached: every caller gets this one array
    return edges


def _block_sums(values: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    sizes = np.diff(edges)
    n = values.shape[axis]
    if n == edges[-1] and (sizes == sizes[0]).all():
        # Equal blocks (128 mel bins in 64 rows): a reshape.
        shape = list(values.shape)
        shape[axis : axis + 1] = [len(sizes), int(sizes[0])]
        return np.asarray(values.reshape(shape).sum(axis=axis + 1))
    # Unequal blocks (313 frames in 128 columns, 2 or 3 each): the i-th item of every block
    # gathered at once for each i (an appended zero for blocks shorter than i + 1), then
    # summed over i; np.add.reduceat does the same one block at a time, far slower.
    offsets = np.arange(int(sizes.max()))[:, None]
    index = np.where(offsets < sizes, edges[:-1] + offsets, n)
    zero = np.zeros_like(values, shape=(*values.shape[:axis], 1, *values.shape[axis + 1 :]))
    padded = np.concatenate([values, zero], axis=axis)
    return np.asarray(padded[(slice(None),) * axis + (index,)].sum(axis=axis))


def block_means(values: np.ndarray, row_edges: np.ndarray, column_edges: np.ndarray) -> np.ndarray:
    """Mean of each block over the last two axes, shape (..., len(row_edges) - 1, len(column_edges) - 1)."""
    sums = _block_sums(_block_sums(values, row_edges, values.ndim - 2), column_edges, values.ndim - 1)
    sizes = np.outer(np.diff(row_edges), np.diff(column_edges)).astype(sums.dtype)
    return np.asarray(sums / sizes)


def _window_sums(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sums of every `size` consecutive items along `axis`: `n - size + 1` of them on that axis.

    By doubling: sums of 1, 2, 4, ... items, and the result from those that make up `size`;
    a few whole-array additions instead of a cumulative sum, which numpy does item by item.
    """

    def part(array: np.ndarray, start: int, length: int) -> np.ndarray:
        return array[(slice(None),) * axis + (slice(start, start + length),)]

    count = values.shape[axis] - size + 1
    spans, span, offset = values, 1, 0  # spans[i]: the sum of `span` items from i on
    pieces = []
    while span <= size:
        if size & span:
            pieces.append(part(spans, offset, count))
            offset += span
        if 2 * span <= size:
            length = spans.shape[axis] - span
            spans = part(spans, 0, length) + part(spans, span, length)
        span *= 2
    total = pieces[0].copy()
    for piece in pieces[1:]:
        total += piece
    return total


def worst_region(errors: np.ndarray, *, rows: int, columns: int) -> tuple[int, int, float]:
    """Top-left cell (row, column) of the `rows` x `columns` box with the highest mean, and that mean."""
    boxes = _window_sums(_window_sums(errors.astype(np.float64), rows, 0), columns, 1)
    row, column = divmod(int(np.argmax(boxes)), boxes.shape[1])
    return row, column, float(boxes[row, column] / (rows * columns))


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
    # Both pictures on one grid, reduced together: the log-mel cropped to the frames the errors
    # cover. float32 sums of a few cells lose nothing a float32 grid keeps.
    both = np.stack([errors, scored.log_mel[:, :n_frames]])
    cells = block_means(both, rows, columns).astype(GRID_DTYPE, copy=False)
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
        error=float(f"{mean:.3g}"),
    )
    return ErrorMap(
        n_rows=n_rows,
        n_columns=n_columns,
        row_hz=np.round(row_hz, 1).tolist(),
        column_edges_s=np.round(column_edges_s, 6).tolist(),
        log_mel_db=cells[1].tobytes(),
        errors=error_cells.tobytes(),
        worst=region,
    )
