"""``/openapi.json``, generated from the routes the server registers and their models.

Each ``Operation`` names its method, path, operationId, request model (JSON body or query),
response models and the error statuses it can answer; the server registers its handlers
from the same list (gate/ops/api.py, gate/ops/http.py), so a route cannot exist without
being described, nor be described with a shape it does not have. Schemas come from the
pydantic models (gate/ops/models.py): ``additionalProperties: false``, required fields,
formats and patterns are the ones the server enforces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from gate import __version__
from gate.ops.models import ErrorOut

__all__ = ["Operation", "openapi"]

_REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "invalid input (the message names the field)",
    401: "missing or wrong bearer token",
    403: "a foreign Host or Origin (the API is not for web pages)",
    404: "unknown list or event",
    413: "too many numbers, or an upload too large",
    415: "wrong Content-Type (JSON requests need application/json)",
    422: "a number that cannot be used, or an emergency number for a block list",
    429: "too many failed sign-ins: wait a minute",
    503: "Redis is unreachable",
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: what it takes, what it answers."""

    method: str
    path: str
    operation_id: str
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # status → model of a JSON answer
    responses: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    # a 200 that is not one JSON document: media type → model of each item (None: text)
    streams: Mapping[str, type[BaseModel] | None] = field(default_factory=dict)
    # media types of a raw request body (an upload), instead of a JSON ``body``
    uploads: tuple[str, ...] = ()
    errors: tuple[int, ...] = (400, 401, 403, 503)
    auth: bool = True
    description: str = ""


class _NoTitles(GenerateJsonSchema):
    """Schemas without the ``title`` pydantic derives from each field name."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _schemas(operations: Sequence[Operation]) -> tuple[Mapping[Any, Any], dict[str, Any]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorOut, "serialization"): None}
    for op in operations:
        for model in (op.body, op.query):
            if model is not None:
                wanted[(model, "validation")] = None
        for model in (*op.responses.values(), *op.streams.values()):
            if model is not None:
                wanted[(model, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=_REF, schema_generator=_NoTitles)
    return refs, top.get("$defs", {})


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: never null (an absent parameter is the default)."""
    schema = dict(schema)
    if schema.get("default", ...) is None:
        del schema["default"]
    options = schema.get("anyOf")
    if options and len(options) == 2 and {"type": "null"} in options:
        del schema["anyOf"]
        schema.update(next(o for o in options if o != {"type": "null"}))
    return schema


def _parameters(op: Operation, query: dict[str, Any] | None) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in op.path_params.items()
    ]
    if query is not None:
        required = set(query.get("required", []))
        for name, prop in query["properties"].items():
            prop = _query_schema(prop)
            description = prop.pop("description", None)
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if description:
                param["description"] = description
            params.append(param)
    return params


def _content(schema: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations``."""
    refs, components = _schemas(operations)
    # Query models are parameters, not components.
    queries = {
        op.query: components.pop(op.query.__name__)
        for op in operations
        if op.query is not None and op.query.__name__ in components
    }
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.description:
            entry["description"] = op.description
        if not op.auth:
            entry["security"] = []
        if params := _parameters(op, queries.get(op.query) if op.query else None):
            entry["parameters"] = params
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": _content(refs[(op.body, "validation")]),
            }
        elif op.uploads:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    media: {"schema": {"type": "string", "contentMediaType": media}}
                    for media in op.uploads
                },
            }
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            responses[str(status)] = {
                "description": model.__doc__.strip().splitlines()[0]
                if model.__doc__
                else model.__name__,
                "content": _content(refs[(model, "serialization")]),
            }
        if op.streams:
            responses["200"] = {
                "description": "streamed (JSON Lines: one JSON document per line; "
                "text/event-stream: one per event)",
                "content": {
                    media: {
                        "schema": refs[(model, "serialization")]
                        if model is not None
                        else {"type": "string"}
                    }
                    for media, model in op.streams.items()
                },
            }
        for status in op.errors:
            responses[str(status)] = {
                "description": _ERRORS[status],
                "content": _content(refs[(ErrorOut, "serialization")]),
            }
        entry["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callgate admin API",
            "version": __version__,
            "description": "Check and scrub numbers, manage lists, consents and cool-offs, "
            "search the audit trail. Send `Authorization: Bearer <api.token>` (or the "
            "console's session cookie, with `X-CSRF-Token` on a change) and, with a "
            'body, `Content-Type: application/json`. Errors are `{"error": "..."}`.',
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "callgate_session"},
            },
            "schemas": components,
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }
