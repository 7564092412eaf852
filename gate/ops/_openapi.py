"""The OpenAPI 3.1 description of the admin API, served at ``/openapi.json``.

Hand-written to match gate/api.py; tests check that every route the server has is here.
"""

from __future__ import annotations

from typing import Any

from gate import __version__

__all__ = ["openapi"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "503": {"$ref": "#/components/responses/StoreUnavailable"},
}
_IDENT = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
_WHEN = {"type": "string", "format": "date-time", "description": "ISO-8601 with a UTC offset"}


def _numbers(max_batch: int) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "maxLength": 32},
        "minItems": 1,
        "maxItems": max_batch,
    }


def _scope() -> dict[str, Any]:
    return {
        "tenant": {**_IDENT, "description": "default: gate.default_tenant"},
        "campaign": {**_IDENT, "description": "required for per-campaign lists"},
    }


def openapi(max_batch: int) -> dict[str, Any]:
    """The description (``max_batch``: numbers per list/scrub request)."""
    attempt = {
        "tenant": _IDENT,
        "campaign": _IDENT,
        "trunk": _IDENT,
        "caller_id": {
            "type": "string",
            "description": "presented caller ID; omitted: caller-ID rules are not checked",
        },
        "class": {"type": "string", "enum": ["campaign", "manual"], "default": "campaign"},
        "at": {**_WHEN, "description": "decide as of this time (default: now)"},
    }
    list_param = {"name": "list", "in": "path", "required": True, "schema": _IDENT}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callgate admin API",
            "version": __version__,
            "description": "Check and scrub numbers, manage lists, consents and cool-offs. "
            'Send `Authorization: Bearer <api.token>`. Errors are `{"error": "..."}`.',
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "Decision": {
                    "type": "object",
                    "properties": {
                        "verdict": {"type": "string", "enum": ["ALLOW", "BLOCK", "DEFER"]},
                        "reason": {"type": "string", "examples": ["listed:red"]},
                        "rule": {"type": "string"},
                        "retry_after_s": {"type": ["number", "null"]},
                        "e164": {"type": "string"},
                        "shadow": {"type": "array", "items": {"type": "string"}},
                        "config_version": {"type": "string"},
                        "rules": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["verdict", "reason", "rule", "retry_after_s", "e164"],
                },
            },
            "responses": {
                "BadRequest": _ok("invalid input (names the field)", _ref("Error")),
                "Unauthorized": _ok("missing or wrong bearer token", _ref("Error")),
                "Unprocessable": _ok(
                    "a number that cannot be used, or an emergency number for a block list",
                    _ref("Error"),
                ),
                "NotFound": _ok("unknown list or event", _ref("Error")),
                "StoreUnavailable": _ok("Redis is unreachable", _ref("Error")),
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "The process is up (never touches Redis); no token needed",
                    "security": [],
                    "responses": {
                        "200": _ok("status, version, config_version", {"type": "object"})
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Redis answers PING and, with [ari], ARI is connected",
                    "security": [],
                    "responses": {
                        "200": _ok("ready, config_version, checks", {"type": "object"}),
                        "503": _ok("not ready: the failing check says why", {"type": "object"}),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format; no token needed",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/v1/check": {
                "post": {
                    "summary": "Decide one call as the gate would",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "number": {"type": "string", "maxLength": 32},
                                **attempt,
                                "record": {
                                    "type": "boolean",
                                    "default": False,
                                    "description": "count the attempt if allowed",
                                },
                                "explain": {"type": "boolean", "default": False},
                            },
                            "required": ["number"],
                        }
                    ),
                    "responses": {"200": _ok("the decision", _ref("Decision")), **_ERRORS},
                }
            },
            "/v1/scrub": {
                "post": {
                    "summary": f"Evaluate up to {max_batch} numbers (nothing is counted)",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {"numbers": _numbers(max_batch), **attempt},
                            "required": ["numbers"],
                        }
                    ),
                    "responses": {
                        "200": _ok(
                            "one result per number, in order, and counts by verdict",
                            {
                                "type": "object",
                                "properties": {
                                    "results": {"type": "array", "items": _ref("Decision")},
                                    "counts": {"type": "object"},
                                    "config_version": {"type": "string"},
                                },
                            },
                        ),
                        "413": {"description": f"more than {max_batch} numbers"},
                        **_ERRORS,
                    },
                }
            },
            "/v1/lists/{list}": {
                "get": {
                    "summary": "Entries and metadata of a list",
                    "parameters": [
                        list_param,
                        {"name": "tenant", "in": "query", "schema": _IDENT},
                        {"name": "campaign", "in": "query", "schema": _IDENT},
                    ],
                    "responses": {
                        "200": _ok("name, kind, scope, entries, refreshed_at…", {"type": "object"}),
                        "404": {"$ref": "#/components/responses/NotFound"},
                        **_ERRORS,
                    },
                }
            },
            **{
                f"/v1/lists/{{list}}/{action}": {
                    "post": {
                        "summary": f"{action.capitalize()} numbers ({text})",
                        "parameters": [list_param],
                        "requestBody": _body(
                            {
                                "type": "object",
                                "properties": {"numbers": _numbers(max_batch), **_scope()},
                                "required": ["numbers"],
                            }
                        ),
                        "responses": {
                            "200": _ok("how many changed", {"type": "object"}),
                            "404": {"$ref": "#/components/responses/NotFound"},
                            "422": {"$ref": "#/components/responses/Unprocessable"},
                            **_ERRORS,
                        },
                    }
                }
                for action, text in (
                    ("add", "an opt-out applies to the very next decision"),
                    ("remove", "nothing is written if one number is invalid"),
                )
            },
            "/v1/consents": {
                "post": {
                    "summary": "Record prior consents",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "numbers": _numbers(max_batch),
                                "list": {**_IDENT, "default": "consent"},
                                **_scope(),
                                "granted_at": _WHEN,
                                "expires": _WHEN,
                            },
                            "required": ["numbers"],
                        }
                    ),
                    "responses": {
                        "200": _ok("recorded and updated counts", {"type": "object"}),
                        "422": {"$ref": "#/components/responses/Unprocessable"},
                        **_ERRORS,
                    },
                }
            },
            "/v1/consents/revoke": {
                "post": {
                    "summary": "Consent withdrawn: remove it from every consent list, red-list",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "numbers": _numbers(max_batch),
                                "red_list": {**_IDENT, "default": "red"},
                                **_scope(),
                            },
                            "required": ["numbers"],
                        }
                    ),
                    "responses": {
                        "200": _ok("revoked and red-listed counts", {"type": "object"}),
                        "422": {"$ref": "#/components/responses/Unprocessable"},
                        **_ERRORS,
                    },
                }
            },
            "/v1/events/{event}": {
                "post": {
                    "summary": "The callee refused, or the call was abandoned: start the cool-off",
                    "parameters": [
                        {
                            "name": "event",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["refusal", "abandoned"]},
                        }
                    ],
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "number": {"type": "string"},
                                "tenant": _IDENT,
                                "at": _WHEN,
                            },
                            "required": ["number"],
                        }
                    ),
                    "responses": {
                        "200": _ok("the cool-off rules now holding the number", {"type": "object"}),
                        "422": {"$ref": "#/components/responses/Unprocessable"},
                        **_ERRORS,
                    },
                }
            },
            "/v1/reload": {
                "post": {
                    "summary": "Re-read the config file and packs; swap them in if valid",
                    "responses": {
                        "200": _ok("the version now in force", {"type": "object"}),
                        "422": _ok("the file was refused; the running config stays", _ref("Error")),
                        **_ERRORS,
                    },
                }
            },
        },
    }
