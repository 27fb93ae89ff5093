"""Per-request context: request id, one JSON log line, HTTP metrics, and a JSON 500 as last resort.

A pure ASGI middleware (not `BaseHTTPMiddleware`) so that it neither buffers
bodies nor runs the app in another task, and the request id context
variable it sets is the one route handlers and their worker threads see.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import REQUEST_ID_HEADER, error_response
from service.logs import redact, request_id_var
from service.metrics import ServiceMetrics

logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.errors")

# A client's own id is kept if it is a plain token; anything else (too long,
# spaces, control characters that could forge log lines) is replaced.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# nginx's code for "the client closed the connection before the answer": not a
# server fault, and nobody is left to receive a response. Only logs and metrics show it.
CLIENT_CLOSED = 499


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        _redact_api_key(scope)
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER.lower(), "")
        request_id = incoming if _CLIENT_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        # Handlers put the model, machine ID and decision here for the log line (request.state).
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if _client_went_away(error) and not response_started:
                # The client hung up mid-upload: its problem, not a 500 (nor a trace in the log).
                status = CLIENT_CLOSED
                state["error_code"] = "client_closed_request"
            else:
                # Anything else that escaped the handlers is a bug; the client still gets
                # the error shape (never a stack trace) and the log gets the trace.
                error_logger.exception(
                    "unhandled error", extra={"method": scope["method"], "path": scope["path"]}
                )
                status = 500
                if not response_started:
                    await error_response(
                        500,
                        "internal_error",
                        f"internal error; quote request id {request_id} when reporting it",
                    )(scope, receive, send)
        finally:
            try:
                self._record(scope, state, request_id, status, time.perf_counter() - started)
            finally:
                request_id_var.reset(token)

    def _record(
        self, scope: Scope, state: dict[str, Any], request_id: str, status: int, duration: float
    ) -> None:
        """Metrics and the request log line; never lets a failure of either reach the request."""
        route = _route_template(scope)
        try:
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(duration)
        except Exception:
            error_logger.warning("metrics could not be recorded", exc_info=True)
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 2),
        }
        for key in ("model", "machine_id", "decision", "error_code"):
            if state.get(key) is not None:
                fields[key] = state[key]
        # 503 is a state (loading, broken model), not a fault of the service.
        level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
        # Logging never raises to the caller (service.logs.SafeStreamHandler counts failures).
        logger.log(level, "request", extra=fields)


def _redact_api_key(scope: Scope) -> None:
    # The key must not reach the logs even if a client sends it as a path or a request id.
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    key = getattr(settings, "api_key", None)
    if key is not None:
        redact(key.get_secret_value())


def _client_went_away(error: BaseException) -> bool:
    if isinstance(error, ClientDisconnect):
        return True
    if isinstance(error, BaseExceptionGroup):
        return all(_client_went_away(inner) for inner in error.exceptions)
    return False


def _route_template(scope: Scope) -> str:
    # The route's path template ("/v1/models/{name}/score"), never the raw
    # path: metric labels must not grow with whatever clients send.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
