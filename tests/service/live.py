"""A real `asd-serve` on a free loopback port, and headless Chromium to drive its pages.

Used by the tests that need TCP and a browser (test_server.py, test_operator_page.py) and by
scripts/operator_page.py (measurements and the README's screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# Debian's package names; CI installs both (.ci/run).
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "chromedriver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, *, status: int, timeout: float, streak: int = 1) -> None:
    """Until `streak` answers in a row are `status`: with several workers, one ready worker answering
    is not all of them ready, and a worker still loading answers 503."""
    deadline = time.monotonic() + timeout
    last: object = None
    run = 0
    while time.monotonic() < deadline:
        try:
            # A new connection each time: with two workers, either may answer.
            last = httpx.get(url, timeout=5, headers={"Connection": "close"})
            run = run + 1 if last.status_code == status else 0
            if run >= streak:
                return
        except httpx.TransportError as error:
            last, run = error, 0
        time.sleep(0.2 if run == 0 else 0.05)
    raise AssertionError(f"{url} did not answer {status} within {timeout} s: {last!r}")


@contextmanager
def asd_serve(models_dir: Path, log: Path, *, port: int | None = None, **settings: str) -> Iterator[str]:
    """`asd-serve` (one worker unless ASD_WORKERS says otherwise) until exit; yields its base URL once ready.

    `port`: a given one, e.g. to start the service again where a client expects it.
    """
    port = port or free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ASD_MODELS_DIR": str(models_dir),
        "ASD_WORKERS": "1",
        **settings,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", "from service.main import run; run()"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            workers = int(env["ASD_WORKERS"])
            wait_for(f"{base}/ready", status=200, timeout=90, streak=1 if workers == 1 else 10 * workers)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here, or None when it can."""
    if not any(shutil.which(name) for name in CHROMIUM):
        return f"no Chromium on PATH (looked for {', '.join(CHROMIUM)}; apt-get install chromium)"
    if shutil.which(CHROMEDRIVER) is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def chromium(*, width: int = 1280, height: int = 800) -> Any:
    """A headless Chromium WebDriver that records every network request (`network_log`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in map(shutil.which, CHROMIUM) if p)
    for argument in (
        "--headless=new",
        f"--window-size={width},{height}",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        # A factory network: no name resolves, so anything from another host would fail to load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    service = Service(executable_path=shutil.which(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)


def network_log(driver: Any) -> tuple[list[str], set[str]]:
    """URLs the browser sent requests to since the last call, and those its CSP stopped before sending.

    The DevTools log drains as it is read. A request the page's Content-Security-Policy blocked
    never leaves the browser; Resource Timing still lists it.
    """
    asked: dict[str, str] = {}
    blocked = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            asked[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.add(params["requestId"])
    sent = [url for request, url in asked.items() if request not in blocked]
    return sent, {asked[request] for request in blocked if request in asked}
