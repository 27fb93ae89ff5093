"""deploy/: the alert rules pass promtool and their unit tests, the Grafana dashboard reads series the
service exports, and a real Prometheus scrapes a real asd-serve, loads the rules and runs every query."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import DEFAULT_MODEL, assert_error
from tests.service.live import free_port, wait_for
from tests.service.sounds import encode, noise

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=PROMETHEUS_DIR)


@needs_promtool
def test_rules_and_config_are_valid() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_every_alert_has_a_firing_unit_test() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts and alerts <= fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


@needs_promtool
def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    # The unit tests can fail: the persistent-anomaly rule made stricter no longer fires.
    text = (PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8")
    stricter = text.replace("asd:anomalous_share:10m > 0.5", "asd:anomalous_share:10m > 1.5")
    assert stricter != text
    (tmp_path / "alerts.yml").write_text(stricter, encoding="utf-8")
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "AsdMachineAnomalous" in done.stdout + done.stderr


GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "asd-machines.json"
# Grafana's own variables, set to what they mean for a query over the last minutes.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$model": ".*", "$machine": ".*"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return queries


def concrete(query: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        query = query.replace(name, value)
    return query


def recorded_names() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_dashboard_queries_read_series_the_service_exports(client):
    clip = encode(noise(2.0))
    assert client.post("/v1/score?machine_id=6", files={"file": ("a.wav", clip)}).status_code == 200
    assert client.post("/v1/score", content=b"junk", headers={"content-type": "audio/wav"}).status_code == 400
    exported = {
        s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples
    }
    known = exported | recorded_names() | {"up"}
    queries = dashboard_queries()
    assert len(queries) >= 10
    for query in queries:
        names = set(re.findall(r"\b(asd[_:][a-z0-9_:]+|up)\b", query))
        assert names, f"a query that reads no series: {query}"
        assert names <= known, f"{query} reads {sorted(names - known)}, which the service does not export"
    # Every panel and variable uses the provisioned data source.
    uid = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text(encoding="utf-8")
    )
    provisioned = {d["uid"] for d in uid["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} | {
        v["datasource"]["uid"] for v in dashboard["templating"]["list"]
    }
    assert used == provisioned


def test_dashboard_provisioning_points_where_compose_mounts_it():
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/asd.yml").read_text(encoding="utf-8"))
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    path = provider["providers"][0]["options"]["path"]
    assert (REPO / mounts[path]).resolve() == DASHBOARD.parent


def _query(base: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (.ci/run installs it)")
def test_a_real_prometheus_scrapes_the_service_and_loads_the_rules(models_dir, real_recordings, tmp_path):
    port, prom_port = free_port(), free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "ASD_MODELS_DIR": str(models_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The shipped configuration, pointed at this test's service and scraped every second.
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
    config = config.replace('"asd:8000"', f'"127.0.0.1:{port}"').replace(
        "scrape_interval: 15s", "scrape_interval: 1s"
    )
    config = config.replace("evaluation_interval: 15s", "evaluation_interval: 1s")
    config = config.replace("  - alerts.yml", f"  - {PROMETHEUS_DIR / 'alerts.yml'}")
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    assert PROMETHEUS is not None
    with open(tmp_path / "asd.log", "wb") as asd_log, open(tmp_path / "prometheus.log", "wb") as prom_log:
        server = subprocess.Popen(
            [sys.executable, "-c", "from service.main import run; run()"],
            env=env,
            stdout=asd_log,
            stderr=subprocess.STDOUT,
        )
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )
        base, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
        try:
            wait_for(f"{base}/ready", status=200, timeout=60)
            wait_for(f"{prom}/-/ready", status=200, timeout=60)
            clip = (real_recordings / "mimii-8ch" / "slider_normal.wav").read_bytes()
            for _ in range(3):
                response = httpx.post(
                    f"{base}/v1/score",
                    params={"machine_id": "06"},
                    files={"file": ("a.wav", clip)},
                    timeout=30,
                )
                assert response.status_code == 200, response.text

            deadline = time.monotonic() + 60
            decided: list[dict] = []
            while time.monotonic() < deadline:
                decided = _query(prom, f'sum(asd_decisions_total{{model="{DEFAULT_MODEL}",machine="06"}})')
                if decided and float(decided[0]["value"][1]) == 3:
                    break
                time.sleep(0.5)
            assert decided and float(decided[0]["value"][1]) == 3, decided

            targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            assert [t["health"] for t in targets if t["labels"]["job"] == "asd"] == ["up"]
            groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            loaded = {r["name"] for g in groups for r in g["rules"]}
            assert {"AsdMachineAnomalous", "AsdServiceDown", "asd:anomalous_share:10m"} <= loaded
            assert all(r.get("health") != "err" for g in groups for r in g["rules"]), groups
            # The series the rules and the dashboard read are there.
            for name in (
                "asd_model_false_alarm_rate",
                "asd_model_calibrated_timestamp_seconds",
                "asd_models",
            ):
                assert _query(prom, name), name
        finally:
            for process in (prometheus, server):
                process.send_signal(signal.SIGINT)
            for process in (prometheus, server):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_a_machine_name_from_the_allow_list_labels_the_series(serve_with) -> None:
    clip = encode(noise(2.0))
    with serve_with(machines="press-3, press-4") as client:
        assert client.post("/v1/score?machine=press-3", files={"file": ("a.wav", clip)}).status_code == 200
        refused = client.post("/v1/score?machine=press-9", files={"file": ("a.wav", clip)})
        error = assert_error(refused, 422, "unknown_machine")
        assert "press-3, press-4" in error["message"]
        exported = text_string_to_metric_families(client.get("/metrics").text)
        counted = {
            (s.labels["machine"], s.labels["decision"]): s.value
            for f in exported
            for s in f.samples
            if s.name == "asd_decisions_total"
        }
        assert sum(v for (m, _), v in counted.items() if m == "press-3") == 1
        assert not any(m == "press-9" for m, _ in counted), "a refused name never becomes a series"
    with serve_with() as client:
        assert_error(
            client.post("/v1/score?machine=press-3", files={"file": ("a.wav", clip)}), 422, "unknown_machine"
        )


@pytest.mark.parametrize("bad", ["a b", "../x", "-lead", "x" * 65])
def test_machine_names_are_checked_at_start(bad: str) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="machine names"):
        Settings(machines=f"ok,{bad}")
