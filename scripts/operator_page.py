"""Measure what `detail=map` and the operator page cost, and take the README's screenshot.

    python scripts/operator_page.py                  # figures for BENCHMARKS.md, docs/operator-page.png
    python scripts/operator_page.py --no-screenshot

1. Server time: the app in-process (TestClient, the repo's models), one 10 s real clip posted
   `--requests` times with and without `detail=map`, alternating; medians of the server's time
   per request (the access log's `duration_ms`: body read to answer sent), of the answer's
   `processing_ms` (decode, features, inference, map), of the client's wall time and of the
   process's CPU time (server and client share it; CPU time moves less with other load); the sizes.
2. The server's work alone, in this process and thread: `score_upload` (decode to answer object)
   and the answer's JSON encoding, each `--requests` times with and without the map; medians and
   minimums (the minimum is what the work costs when nothing else takes the CPU).
3. The page: a real `asd-serve` and headless Chromium; the clip is uploaded `--uploads` times and
   the page's own `asd-answer-to-drawn-<n>` measures (parsed answer to pictures drawn) are read.
Needs the dev dependencies and, for 2, chromium and chromedriver.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402 (after the path set-up above)

from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402
from tests.conftest import real_recordings_dir  # noqa: E402
from tests.service.live import asd_serve, chromium, chromium_missing  # noqa: E402

CLIP = real_recordings_dir() / "mimii-8ch" / "slider_normal.wav"
SCREENSHOT_CLIP = real_recordings_dir() / "mimii-8ch" / "slider_abnormal.wav"


class _Durations(logging.Handler):
    """The `duration_ms` of each access log line."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.values.append(float(getattr(record, "duration_ms", "nan")))


def server_time(requests: int) -> dict[str, float]:
    app = create_app(Settings(models_dir=REPO / "models", log_level="WARNING"))
    data = CLIP.read_bytes()
    times: dict[str, dict[str, list[float]]] = {
        kind: {"none": [], "map": []} for kind in ("server", "processing", "wall", "cpu")
    }
    size = {}
    durations = _Durations()
    access = logging.getLogger("service.access")
    with TestClient(app) as client:
        assert app.state.registry.wait(120)
        access.addHandler(durations)
        access.setLevel(logging.INFO)  # the lifespan set WARNING for everything else
        for index in range(requests + 5):
            for detail in ("none", "map"):
                started, cpu = time.perf_counter(), time.process_time()
                response = client.post(
                    "/v1/score", params={"detail": detail}, files={"file": (CLIP.name, data)}
                )
                elapsed = (time.perf_counter() - started) * 1000
                cpu_ms = (time.process_time() - cpu) * 1000
                response.raise_for_status()
                size[detail] = len(response.content)
                if index >= 5:  # warm-up first
                    times["wall"][detail].append(elapsed)
                    times["cpu"][detail].append(cpu_ms)
                    times["processing"][detail].append(response.json()["processing_ms"])
                    times["server"][detail].append(durations.values[-1])
        access.removeHandler(durations)
    medians = {
        f"{kind}_{detail}": statistics.median(v) for kind, d in times.items() for detail, v in d.items()
    }
    return {**medians, "bytes_none": size["none"], "bytes_map": size["map"]}


def server_work(requests: int) -> dict[str, tuple[float, float]]:
    from pydantic import TypeAdapter

    from service.detector import Detector
    from service.schemas import Detail, ScoreResult
    from service.scoring import score_upload

    detector = Detector(REPO / "models" / "slider")
    data = CLIP.read_bytes()
    encode = TypeAdapter(ScoreResult).dump_json
    spent: dict[str, list[float]] = {"score_none": [], "score_map": [], "json_none": [], "json_map": []}
    details: tuple[Detail, ...] = ("none", "map")
    for index in range(requests + 5):
        for detail in details:
            started = time.perf_counter()
            answer = score_upload("slider", detector, data, detail=detail)
            scored = time.perf_counter()
            encode(answer)
            if index >= 5:
                spent[f"score_{detail}"].append((scored - started) * 1000)
                spent[f"json_{detail}"].append((time.perf_counter() - scored) * 1000)
    return {name: (statistics.median(v), min(v)) for name, v in spent.items()}


def page_time(uploads: int, screenshot: Path | None) -> list[float]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with (
        tempfile.TemporaryDirectory() as folder,
        asd_serve(REPO / "models", Path(folder) / "server.log") as base,
    ):
        driver = chromium()
        try:
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
            )
            driver.get(f"{base}/")
            wait = WebDriverWait(driver, 60)
            wait.until(
                lambda d: d.execute_script("return document.getElementById('model').options.length > 0")
            )

            def rows() -> int:
                return int(
                    driver.execute_script("return document.querySelectorAll('#results tbody tr').length")
                )

            for count, clip in enumerate([CLIP] * uploads + [SCREENSHOT_CLIP], start=1):
                driver.find_element(By.ID, "files").send_keys(str(clip))

                def scored(_: object, count: int = count) -> bool:
                    return rows() >= count

                wait.until(scored)
            measures = driver.execute_script(
                "return performance.getEntriesByType('measure')"
                ".filter(m => m.name.startsWith('asd-answer-to-drawn')).map(m => m.duration)"
            )
            if screenshot is not None:
                driver.execute_script("window.scrollTo(0, 0)")
                driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
    return [float(m) for m in measures[:uploads]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "operator-page.png")
    parser.add_argument("--no-screenshot", action="store_true")
    args = parser.parse_args()

    server = server_time(args.requests)
    print(f"clip: {CLIP.name}, {args.requests} requests each (after 5 warm-up), in-process")
    for kind in ("server", "processing", "wall", "cpu"):
        none, with_map = server[f"{kind}_none"], server[f"{kind}_map"]
        print(f"{kind} ms, median: none {none:.2f}, map {with_map:.2f}, added {with_map - none:+.2f}")
    print(f"answer bytes: none {server['bytes_none']}, map {server['bytes_map']}")
    work = server_work(args.requests)
    for part in ("score", "json"):
        (none, none_min), (with_map, map_min) = work[f"{part}_none"], work[f"{part}_map"]
        print(
            f"{part} ms, median (min): none {none:.2f} ({none_min:.2f}), map {with_map:.2f} ({map_min:.2f}), "
            f"added {with_map - none:+.2f} ({map_min - none_min:+.2f})"
        )

    missing = chromium_missing()
    if missing:
        print(f"page: not measured, {missing}")
        return
    measures = page_time(args.uploads, None if args.no_screenshot else args.screenshot)
    print(
        f"page answer-to-drawn ms over {len(measures)} uploads: median {statistics.median(measures):.1f}, "
        f"min {min(measures):.1f}, max {max(measures):.1f}"
    )
    if not args.no_screenshot:
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
