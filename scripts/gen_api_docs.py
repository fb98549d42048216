#!/usr/bin/env python3
"""Writes the HTTP half of the API reference from the code: ``docs/openapi/asr.json`` and ``docs/openapi/tts.json``.

    .venv/bin/python scripts/gen_api_docs.py          # rewrite the files
    .venv/bin/python scripts/gen_api_docs.py --check  # exit 1 if a committed file is stale

Each file is the FastAPI app's own ``app.openapi()`` (the app is built as the
tests build it: no model is loaded), with what the framework cannot see filled
in from the same code: the JSON request bodies the routes parse themselves (the
pydantic model an endpoint names), the query parameters an endpoint reads by
hand, and the services' one error body (``{"error":{"code","message"}}`` with
every :class:`~services.common.errors.ErrorCode`) instead of FastAPI's
validation error. ``tests/test_api_reference.py`` regenerates both and fails
when the committed files differ, so the code stays the one source of truth. The
WebSocket half is ``docs/asyncapi.yaml``; the prose is ``docs/api.md``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("asr", "tts")
ERROR_SCHEMA = "ErrorResponse"
_REF = "#/components/schemas/"


def build_app(service: str):
    """The service's app exactly as ``create_app()`` makes it (the lifespan, which loads models, never runs)."""
    return importlib.import_module(f"services.{service}.app").create_app()


def http_routes(app) -> list[tuple[str, str, Any]]:
    """``(method, path, endpoint)`` of every HTTP route of ``app`` (HEAD left out)."""
    try:
        from fastapi.routing import iter_route_contexts
        contexts = list(iter_route_contexts(app.routes))
    except ImportError:  # FastAPI before included routers were wrapped: the routes themselves
        contexts = list(app.routes)
    found = []
    for route in contexts:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append((method, getattr(route, "path_format", route.path), route.endpoint))
    return found


def body_models(endpoint) -> list[type]:
    """The pydantic models an endpoint names (the JSON body it validates itself)."""
    from pydantic import BaseModel

    names = getattr(getattr(endpoint, "__code__", None), "co_names", ())
    found = [endpoint.__globals__.get(n) for n in names]
    return [m for m in found if inspect.isclass(m) and issubclass(m, BaseModel)]


def read_query_names(endpoint) -> list[str]:
    """Query parameters an endpoint reads by hand: ``<...query...>.get("name")`` or ``[...]["name"]``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(endpoint)))
    except (OSError, TypeError):
        return []
    names: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        target = key = None
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr == "get" and node.args:
            target, key = node.func.value, node.args[0]
        elif isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        if (target is not None and "query" in ast.unparse(target) and isinstance(key, ast.Constant)
                and isinstance(key.value, str)):
            names.append((node.lineno, node.col_offset, key.value))
    return list(dict.fromkeys(name for *_, name in sorted(names)))


def error_schema() -> dict:
    from services.common.errors import ErrorCode

    return {"type": "object", "title": "ErrorResponse", "required": ["error"],
            "description": "Every HTTP error of both services (docs/api.md, \"Errors\").",
            "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                "message": {"type": "string"}}}}}


def _hoist(schema: dict, components: dict) -> dict:
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    return schema


def openapi_document(service: str) -> dict:
    """``app.openapi()`` of the service, completed as the module docstring says."""
    app = build_app(service)
    doc = json.loads(json.dumps(app.openapi()))  # a private copy: the app caches its schema
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    error_ref = {"$ref": _REF + ERROR_SCHEMA}
    error_content = {"application/json": {"schema": error_ref}}
    for method, path, endpoint in http_routes(app):
        operation = doc["paths"].get(path, {}).get(method.lower())
        if operation is None:  # not in the schema (FastAPI's own /docs, /openapi.json)
            continue
        models = body_models(endpoint)
        if models and "requestBody" not in operation:
            model = models[0]
            components[model.__name__] = _hoist(model.model_json_schema(ref_template=_REF + "{model}"), components)
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": {"$ref": _REF + model.__name__}}}}
        declared = {p["name"] for p in operation.get("parameters", [])}
        extra = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"},
                  "description": "Read by the handler itself; values in docs/api.md."}
                 for name in read_query_names(endpoint) if name not in declared]
        if extra:
            operation["parameters"] = operation.get("parameters", []) + extra
        responses = operation.setdefault("responses", {})
        if "422" in responses:
            responses["422"] = {"description": "Invalid parameters (invalid_parameter)", "content": error_content}
        if path not in ("/health", "/ready", "/metrics"):
            responses["default"] = {"description": "An error: the code says which (docs/api.md, \"Errors\")",
                                    "content": error_content}
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's error body, replaced above
        if f'"{_REF}{unused}"' not in json.dumps(doc):
            components.pop(unused, None)
    components[ERROR_SCHEMA] = error_schema()
    return doc


def rendered() -> dict[Path, str]:
    """What the committed files must hold: path -> text."""
    return {ROOT / "docs" / "openapi" / f"{s}.json": json.dumps(openapi_document(s), indent=2, ensure_ascii=False)
            + "\n" for s in SERVICES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
