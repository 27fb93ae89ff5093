"""Prometheus scrape endpoint (open, like health)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import MetricsDep
from service.api.openapi import DocstringRoute

router = APIRouter(route_class=DocstringRoute, tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"example": 'asd_decisions_total{decision="normal",model="slider"} 12.0\n'}
            },
            "description": "Prometheus text exposition format.",
        }
    },
)
def metrics(service_metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latencies, decisions and score ratios per model, model status."""
    body, content_type = service_metrics.render()
    return Response(content=body, media_type=content_type)
