"""Small corrections to the generated OpenAPI document, for /docs.

- The first docstring line of each endpoint is its summary (FastAPI would use
  the function name); `DocstringRoute` does that, as the routers' route class.
- Upload fields are declared as `format: binary`. FastAPI now writes the
  OpenAPI 3.1 form (`contentMediaType`), which Swagger UI only renders as a
  file picker for a plain single field: not for an optional one (`anyOf` with
  null) nor for the items of a list (swagger-ui issues #9278, #10825). Bytes
  inside a JSON answer (a `contentEncoding`, e.g. the error map's grids) are
  not uploads and keep their schema.
- FastAPI's own 422 schema (`HTTPValidationError`) is replaced by the
  service's error body, which is what a validation error really answers.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

_BINARY = {"type": "string", "format": "binary"}


class DocstringRoute(APIRoute):
    """An APIRoute whose OpenAPI summary is its endpoint's first docstring line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.summary is None and self.endpoint.__doc__:
            self.summary = inspect.cleandoc(self.endpoint.__doc__).partition("\n")[0].strip()


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` by a cached generator that applies the corrections above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            components = schema.get("components", {}).get("schemas", {})
            for component in components.values():
                for name, prop in component.get("properties", {}).items():
                    component["properties"][name] = _file_field(prop)
            _validation_errors_as_error_body(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_file(schema: dict[str, Any]) -> bool:
    return (
        schema.get("type") == "string"
        and schema.get("contentMediaType") == "application/octet-stream"
        and "contentEncoding" not in schema
    )


def _file_field(prop: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in prop.items() if k in ("title", "description")}
    if _is_file(prop):
        return {**_BINARY, **keep}
    options = prop.get("anyOf", [])
    if any(_is_file(o) for o in options) and all(_is_file(o) or o.get("type") == "null" for o in options):
        return {**_BINARY, **keep}
    if prop.get("type") == "array" and _is_file(prop.get("items", {})):
        return {"type": "array", "items": dict(_BINARY), **keep}
    return prop


def _validation_errors_as_error_body(schema: dict[str, Any]) -> None:
    components = schema.get("components", {}).get("schemas", {})
    if "ErrorResponse" not in components:
        return
    for operation in (op for item in schema.get("paths", {}).values() for op in item.values()):
        response = operation.get("responses", {}).get("422")
        if response and "HTTPValidationError" in str(response):
            operation["responses"]["422"] = {
                "description": "Invalid parameters.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
