"""Structured logs: one JSON object per line, with the request id of the request being served.

Nothing here runs at import. `configure_logging` is called by `run()` (through
uvicorn's `log_config`, so every worker process gets it) and again by the
app's lifespan, which only adds a handler when nobody configured logging.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The id of the request this task (or the worker thread it handed work to:
# anyio copies the context into threads) is serving.
request_id_var: ContextVar[str | None] = ContextVar("asd_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "asd-json"


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, then whatever was passed as `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
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
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """Send the root logger to stdout as JSON, unless logging is already set up.

    "Already set up" means a handler on the root logger: uvicorn's `log_config`
    from `run()`, or pytest's capture. The service's own level is set either way.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
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
                "class": "logging.StreamHandler",
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
