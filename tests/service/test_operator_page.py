"""The operator's page and the API docs in headless Chromium, against a real `asd-serve`.

Skipped only where Chromium or chromedriver is missing (CI installs both: .ci/run). The browser
resolves no host name (live.chromium), as on a factory network without internet access, and
every request it makes is checked to go to the service itself.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.conftest import real_recordings_dir
from tests.service.live import asd_serve, chromium, chromium_missing, network_log

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")

CLIP = real_recordings_dir() / "mimii-8ch" / "slider_normal.wav"
KEY = "page-key-0123456789"
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with asd_serve(models_dir, tmp_path_factory.mktemp("page") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any, timeout: float = TIMEOUT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def open_page(driver: Any, url: str) -> None:
    """Load the page afresh and wait until the model list arrived."""
    network_log(driver)  # drain the log of earlier pages
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.getElementById('model').options.length > 0"))


def rows(driver: Any) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


def upload(driver: Any, path: Path, *, expect_rows: int) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "files").send_keys(str(path))
    wait(driver, lambda d: len(rows(d)) >= expect_rows)


def painted_pixels(driver: Any, canvas_id: str) -> tuple[int, int]:
    """(pixels drawn, distinct colours) of a canvas."""
    return tuple(
        driver.execute_script(
            """
            const canvas = document.getElementById(arguments[0]);
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0; const colours = new Set();
            for (let i = 0; i < data.length; i += 4) {
              if (data[i + 3] > 0) { painted++; colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]); }
            }
            return [painted, colours.size];
            """,
            canvas_id,
        )
    )


def assert_same_origin(base: str, urls: list[str]) -> None:
    origin = urlsplit(base).netloc
    assert urls, "the browser logged no request"
    elsewhere = [u for u in urls if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != origin]
    assert not elsewhere, f"requests to other hosts: {elsewhere}"


def assert_only_own_requests(base: str, driver: Any) -> set[str]:
    """Nothing the page loaded (Resource Timing) or asked for (DevTools: the favicon too) left the
    service's origin, but for requests its CSP stopped in the browser; returns those."""
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    sent, blocked = network_log(driver)
    assert_same_origin(base, sent)
    assert_same_origin(base, [url for url in resources if url not in blocked])
    return blocked


def api_answer(base: str, path: Path, **params: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/models/slider/score",
        params=params,
        files={"file": (path.name, path.read_bytes())},
        timeout=30,
    )


def test_a_real_clip_is_scored_and_drawn(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{server}/")
    upload(browser, CLIP, expect_rows=1)
    expected = api_answer(server, CLIP, detail="map").json()

    [row] = rows(browser)
    assert row[1] == CLIP.name and row[2] == "slider"
    assert row[4] == expected["decision"]
    assert float(row[5]) == pytest.approx(expected["score"], rel=1e-3)
    decision = browser.execute_script(
        "const e = document.getElementById('decision'); return [e.textContent, e.className]"
    )
    assert decision == [expected["decision"].capitalize(), f"decision {expected['decision']}"]
    score_line = browser.execute_script("return document.getElementById('score-line').textContent")
    assert f"{expected['threshold']:.3g}" in score_line
    checks = browser.execute_script("return document.getElementById('checks').textContent")
    for finding in expected["input_check"]["findings"]:
        assert finding["message"] in checks

    # Every picture is drawn: the images in many colours, the waveform at least in one.
    for canvas, least_colours in (("waveform", 1), ("logmel", 100), ("errmap", 100)):
        painted, colours = painted_pixels(browser, canvas)
        assert painted > 1000 and colours >= least_colours, (canvas, painted, colours)
    bars = browser.execute_script("return document.querySelectorAll('#segments rect.bar').length")
    assert bars == len(expected["segments"])
    assert browser.execute_script("return document.querySelectorAll('#segments line.threshold').length") == 1
    caption = browser.execute_script("return document.getElementById('errmap-caption').textContent")
    worst = expected["map"]["worst"]
    assert f"{worst['start_s']}\u2013{worst['end_s']} s" in caption  # an en dash, as the page writes it

    # The CSV link downloads the table's row.
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    browser.find_element(By.ID, "csv-link").click()
    download = tmp_path / "asd-results.csv"
    wait(browser, lambda _: download.is_file() and download.stat().st_size > 0)
    [record] = list(csv.DictReader(io.StringIO(download.read_text(encoding="utf-8"))))
    assert record["file"] == CLIP.name and record["decision"] == expected["decision"]
    assert float(record["score"]) == pytest.approx(expected["score"], rel=1e-3)

    # The page draws soon after the answer (target 300 ms; bounded loosely for a loaded machine).
    [drawn] = browser.execute_script(
        "return performance.getEntriesByType('measure').filter(m => m.name.startsWith('asd-answer-to-drawn'))"
        ".map(m => m.duration)"
    )
    assert 0 < drawn < 2000
    assert not assert_only_own_requests(server, browser)


def decode_in_page(driver: Any, text: str, rows: int, columns: int) -> Any:
    """The page's own `decodeGrid` (static/js/api.js) on `text`: its values, or its error's message."""
    return driver.execute_async_script(
        "const [text, rows, columns, done] = arguments;"
        "import('/static/js/api.js')"
        ".then((api) => done(Array.from(api.decodeGrid(text, rows, columns))))"
        ".catch((error) => done(`${error.name}: ${error.message}`));",
        text,
        rows,
        columns,
    )


def test_the_page_reads_the_map_grids_as_the_schema_says(server, browser):
    open_page(browser, f"{server}/")
    answer_map = api_answer(server, CLIP, detail="map").json()["map"]
    rows, columns = answer_map["n_rows"], answer_map["n_columns"]
    for name in ("errors", "log_mel_db"):
        expected = np.frombuffer(base64.urlsafe_b64decode(answer_map[name]), dtype="<f4")
        # float32 values are exact as JS numbers and as Python floats: equal, not close.
        assert decode_in_page(browser, answer_map[name], rows, columns) == expected.tolist()
    short = decode_in_page(browser, answer_map["errors"], rows + 1, columns)
    assert short == (
        f"Error: The service's error map has {rows * columns * 4} bytes, not {rows + 1} x {columns} float32 values"
    )
    assert (
        decode_in_page(browser, "not base64 !", rows, columns)
        == "Error: The service's error map is not base64url"
    )


def test_a_file_that_is_not_audio_shows_the_api_message_and_keeps_the_rows(server, browser, tmp_path):
    open_page(browser, f"{server}/")
    upload(browser, CLIP, expect_rows=1)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording\n")
    upload(browser, notes, expect_rows=2)
    message = api_answer(server, notes).json()["error"]["message"]

    first, second = rows(browser)
    assert first[1] == CLIP.name and first[4] in ("normal", "anomalous")
    assert second[1] == notes.name and second[4] == "error" and second[-1] == message
    shown = browser.execute_script(
        "const e = document.getElementById('error'); return [e.hidden, e.textContent]"
    )
    assert shown == [False, f"{notes.name}: {message}"]
    # The clip shown is still the last one scored.
    assert browser.execute_script("return document.getElementById('detail').dataset.index") == "1"


def test_every_control_has_a_label_and_the_keyboard_reaches_them_in_order(server, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, f"{server}/")
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim() && !e.getAttribute('aria-label'))"
        ".map(e => e.id)"
    )
    assert unlabelled == []
    browser.execute_script("document.activeElement.blur(); document.getElementById('api-key').focus()")
    order = []
    for _ in range(3):
        order.append(browser.execute_script("return document.activeElement.id"))
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert order == ["api-key", "model", "machine-id"]


def test_the_page_fits_a_phone(server, browser):
    try:
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        open_page(browser, f"{server}/")
        upload(browser, CLIP, expect_rows=1)
        width, scroll_width, figure_width = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth,"
            " document.getElementById('logmel').getBoundingClientRect().width]"
        )
        assert width == 390 and scroll_width <= width  # no sideways scrolling
        assert figure_width > 0.8 * width  # the pictures stack, one per row
        assert painted_pixels(browser, "errmap")[0] > 1000
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_page_works_with_the_api_key(models_dir, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with asd_serve(models_dir, tmp_path / "server.log", ASD_API_KEY=KEY) as base:
        network_log(browser)
        browser.get(f"{base}/")
        wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "an API key is required" in browser.find_element(By.ID, "error").text
        key = browser.find_element(By.ID, "api-key")
        assert key.get_attribute("type") == "password"
        key.send_keys(KEY, Keys.TAB)  # the change event loads the models with the key
        wait(browser, lambda d: "slider" in d.execute_script("return document.getElementById('model').value"))
        upload(browser, CLIP, expect_rows=1)
        assert rows(browser)[0][4] in ("normal", "anomalous")
        # Kept in the page only.
        stored = browser.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie]"
        )
        assert stored == [0, 0, ""]
        assert not assert_only_own_requests(base, browser)


@pytest.mark.parametrize(
    ("path", "operation"),
    [("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")],
)
def test_the_api_docs_render_offline(server, browser, path, operation):
    operations = sum(len(item) for item in httpx.get(f"{server}/openapi.json").json()["paths"].values())
    network_log(browser)
    browser.get(f"{server}{path}")
    wait(
        browser,
        lambda d: d.execute_script(f"return document.querySelectorAll({operation!r}).length") >= operations,
    )
    scripts = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.endswith(".js") for name in scripts)
    # ReDoc's bundle always shows Redocly's logo from its CDN; /redoc's CSP stops that (service/api/docs.py).
    assert assert_only_own_requests(server, browser) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
