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

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import REQUEST_ID_HEADER, error_response
from service.logs import request_id_var
from service.metrics import ServiceMetrics

logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.errors")

# A client's own id is kept if it is a plain token; anything else (too long,
# spaces, control characters that could forge log lines) is replaced.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER.lower(), "")
        request_id = incoming if _CLIENT_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        # Handlers put the model and decision here for the log line (request.state).
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
        except Exception:
            # Anything that escaped the handlers is a bug; the client still gets
            # the error shape (never a stack trace) and the log gets the trace.
            error_logger.exception(
                "unhandled error", extra={"method": scope["method"], "path": scope["path"]}
            )
            status = 500
            if not response_started:
                await error_response(
                    500, "internal_error", f"internal error; quote request id {request_id} when reporting it"
                )(scope, receive, send)
        finally:
            duration = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(duration)
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
            }
            for key in ("model", "decision", "error_code"):
                if state.get(key) is not None:
                    fields[key] = state[key]
            # 503 is a state (loading, broken model), not a fault of the service.
            level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
            logger.log(level, "request", extra=fields)
            request_id_var.reset(token)


def _route_template(scope: Scope) -> str:
    # The route's path template ("/v1/models/{name}/score"), never the raw
    # path: metric labels must not grow with whatever clients send.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
