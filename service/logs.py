"""Structured logs: one JSON object per line, with the request id of the request being served.

Nothing here runs at import. `configure_logging` is called by `run()` (through
uvicorn's `log_config`, so every worker process gets it) and again by the
app's lifespan, which only adds a handler when nobody configured logging.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

# The id of the request this task (or the worker thread it handed work to:
# anyio copies the context into threads) is serving.
request_id_var: ContextVar[str | None] = ContextVar("asd_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "asd-json"


# Secrets (the API key) that must never reach a log line, even when a client puts
# one where logged things come from (a path, a request id). See `redact`.
_secrets: frozenset[str] = frozenset()
REDACTED = "[redacted]"


def redact(secret: str) -> None:
    """From now on, `secret` is replaced by "[redacted]" in every line JsonFormatter writes."""
    global _secrets  # noqa: PLW0603 (one process-wide set, replaced whole so readers never see it half-built)
    if secret and secret not in _secrets:
        _secrets = _secrets | {secret}


def _without_secrets(line: str) -> str:
    for secret in _secrets:
        if secret in line:
            line = line.replace(secret, REDACTED)
    return line


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, pid, request_id, then whatever was passed as `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Which process: with several uvicorn workers, lines of all of them interleave.
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            payload["request_id"] = request_id
        for key, value in record.__dict__.items():
            if (
                key not in _STANDARD
                and key not in payload
                and not key.startswith("_")
                and key != "color_message"
            ):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return _without_secrets(json.dumps(payload, default=str, ensure_ascii=False))


@dataclass(frozen=True)
class LogFailures:
    """Log records this process could not write, and the last reason (e.g. disk full)."""

    count: int = 0
    last_error: str | None = None
    last_at: float | None = None  # time.time() of the last failure


class _FailureCounter:
    NOTICE_INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = LogFailures()
        self._last_notice = float("-inf")

    def record(self, error: BaseException | None) -> None:
        now = time.time()
        reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        with self._lock:
            count = self._state.count + 1
            self._state = LogFailures(count, reason, now)
            notify = time.monotonic() - self._last_notice >= self.NOTICE_INTERVAL_S
            if notify:
                self._last_notice = time.monotonic()
        if notify:
            _notice(count, reason)

    def snapshot(self) -> LogFailures:
        return self._state

    def reset(self) -> None:  # for tests
        with self._lock:
            self._state = LogFailures()
            self._last_notice = float("-inf")


log_failures = _FailureCounter()


def _notice(count: int, reason: str) -> None:
    # One line on stderr (which may work when stdout does not), at most once a
    # minute: never a traceback per record, which would cost CPU on every request
    # and flood a stream that is probably failing too.
    line = json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "ERROR",
            "logger": "service.logs",
            "message": "log records cannot be written; the service keeps serving without them",
            "failed_records": count,
            "error": reason,
        }
    )
    try:
        stream = sys.__stderr__ or sys.stderr
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
    except Exception:
        pass


class SafeStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler for which a failing stream (disk full, closed pipe) is never the caller's problem.

    The standard handler already catches write errors, but then prints a
    traceback per record to stderr. This one counts the failure (shown by
    GET /ready as `log_errors`) and writes a one-line notice at most once a minute.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging.Handler's name)
        log_failures.record(sys.exc_info()[1])


def configure_logging(level: str = "INFO") -> None:
    """Send the root logger to stdout as JSON, unless logging is already set up.

    "Already set up" means a handler on the root logger: uvicorn's `log_config`
    from `run()`, or pytest's capture. The service's own level is set either way.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = SafeStreamHandler(sys.stdout)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger("service").setLevel(level)


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn: everything as JSON on stdout.

    uvicorn's access log is off (`access_log=False` in `run()`): the service's
    own request log line carries the same facts plus request id, model and decision.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            _HANDLER_NAME: {
                "class": "service.logs.SafeStreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": [_HANDLER_NAME], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
            "service": {"level": level},
        },
    }
