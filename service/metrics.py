"""Prometheus metrics of one app: HTTP traffic, scoring outcomes, model status.

Each app gets its own `CollectorRegistry`, so apps built in tests start from
zero. With several uvicorn workers, every worker is its own process with its
own counters; when `PROMETHEUS_MULTIPROC_DIR` is set (`run()` sets it to a
fresh temporary folder whenever `workers > 1`), prometheus_client writes the
values to files there and `/metrics` merges the files of all workers, so
whichever worker answers shows the totals. The variable must be set before
the worker processes import prometheus_client, which is why `run()` does it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    multiprocess,
    platform_collector,
    process_collector,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# score / threshold: fine around 1, where decisions flip.
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# The `machine` label of a clip scored without a machine ID or an allowed machine name.
NO_MACHINE = "unspecified"


class ServiceMetrics:
    """All metrics the service records, registered in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        if not self.multiprocess:
            # Process metrics describe this one process; in multiprocess mode
            # they would not add up across workers, so prometheus_client skips them.
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        registry = self.registry
        # The label sets `service.api.deps.publish_models` last set, per gauge: what a reload retires.
        self.published: dict[Gauge, set[tuple[str, ...]]] = {}
        self.requests = Counter(
            "asd_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "asd_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.scoring_seconds = Histogram(
            "asd_scoring_duration_seconds",
            "Decode, features and inference time of one clip.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "asd_decisions_total",
            "Scored clips by model, machine and decision.",
            ["model", "machine", "decision"],
            registry=registry,
        )
        self.ratio = Histogram(
            "asd_score_ratio",
            "Anomaly score divided by the threshold it was decided with, per scored clip.",
            ["model", "machine"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.input_checks = Counter(
            "asd_input_checks_total",
            "Scored clips by model, machine and input check status (ok, warning, unchecked).",
            ["model", "machine", "status"],
            registry=registry,
        )
        # A clip can have several findings: this counts findings, the one above clips.
        self.input_findings = Counter(
            "asd_input_findings_total",
            "Input check findings (the clip unlike the training audio) by model, machine and code.",
            ["model", "machine", "code"],
            registry=registry,
        )
        self.scoring_errors = Counter(
            "asd_scoring_errors_total",
            "Clips that could not be scored, by model and error code.",
            ["model", "code"],
            registry=registry,
        )
        # Every worker loads the same folder, so the max over workers is the answer.
        self.models = Gauge(
            "asd_models",
            "Models found in the models folder, by status (ready or broken).",
            ["status"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.false_alarm_rate = Gauge(
            "asd_model_false_alarm_rate",
            "The share of normal clips each ready model's calibrated threshold is meant to flag.",
            ["model"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.calibrated = Gauge(
            "asd_model_calibrated_timestamp_seconds",
            "When each ready model's threshold was last fitted (training or on-site recalibration).",
            ["model"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.threshold = Gauge(
            "asd_model_threshold",
            "Decision threshold of each ready model (the model-wide one).",
            ["model"],
            multiprocess_mode="max",
            registry=registry,
        )
        # A gauge of its own, so that asd_model_threshold keeps one series per model for alerts.
        self.id_threshold = Gauge(
            "asd_model_id_threshold",
            "Decision threshold of each machine ID that a ready model has its own fit for.",
            ["model", "machine_id"],
            multiprocess_mode="max",
            registry=registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of all metrics, merged across workers in multiprocess mode."""
        if self.multiprocess:
            merged = CollectorRegistry()
            # prometheus_client leaves MultiProcessCollector.__init__ unannotated.
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
