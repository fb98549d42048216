"""What the code says the wire is: routes, event types and their fields, query parameters, error and close codes.

Everything here is read from the running code, never from a list kept by hand,
so that ``tests/test_api_reference.py`` can check the reference (docs/api.md,
docs/asyncapi.yaml, docs/openapi/) against it and fail when the code has
something the reference lacks:

* routes from the FastAPI apps that ``create_app()`` builds (no model loads);
* the native events from the classes: every :class:`~services.common.protocol.Event`
  subclass (its wire fields are the keys its own ``to_json()`` writes), every
  client message dataclass with a ``type`` literal, every message table (a
  module-level ``{type: parser}`` dict) and :meth:`ServiceError.event`;
* the compatibility dialects' events from the source of the ``services``
  package: every JSON object literal with a constant ``"type"`` (its constant
  keys are its fields) and every constant compared with a variable assigned from
  a ``"type"`` read (``kind = data.get("type")``; ``kind == "session.update"``),
  ASGI's own ``http.*``/``websocket.*`` messages left out;
* query parameters: every constant name read from something called ``query``;
  for a native socket also which field of its ``StreamParams`` each one fills
  (the name itself, else the names that flow into that field's argument where
  ``parse_stream_params`` builds it: ``first_segment`` is ``resume_segment``);
* the Wyoming events the services' Wyoming servers handle or send: every event
  class the ``services`` package imports from the ``wyoming`` library, by its
  wire ``type``;
* error codes with their HTTP status, close code and fatality from
  :class:`~services.common.errors.ServiceError`; close codes also from every
  constant passed to ``CloseRequest(...)`` or ``.close(...)``.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import importlib
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import services
from services.common.errors import ErrorCode, ServiceError
from services.common.protocol import Event

SERVICES = ("asr", "tts")
ASGI_TYPES = {"http", "websocket", "lifespan"}
"""ASGI's own messages (``websocket.accept``, ``http.disconnect``...) are the server's plumbing, not the wire API."""


@dataclass(frozen=True)
class Route:
    service: str
    method: str  # GET, POST, DELETE or WS
    path: str  # as OpenAPI writes it: /v1/voices/{voice_id}
    endpoint: Any
    in_schema: bool

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class WireObject:
    """A JSON object with a ``type`` that the code writes or reads."""

    type: str
    fields: frozenset[str]  # its other keys, as far as the code shows them
    exact: bool  # the fields are all there is (a native event: its to_json() was run)
    where: str  # module (and line) that defines it

    def __str__(self) -> str:
        return f"{self.type!r} ({self.where})"


# -- the apps and their routes -------------------------------------------------------------------------------

@functools.cache
def app(service: str):
    return importlib.import_module(f"services.{service}.app").create_app()


def routes() -> list[Route]:
    from fastapi.routing import APIWebSocketRoute
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were wrapped: the routes themselves
        def iter_route_contexts(found):
            return found
    found = []
    for service in SERVICES:
        for route in iter_route_contexts(app(service).routes):
            path = getattr(route, "path_format", route.path)
            original = getattr(route, "original_route", route)
            in_schema = getattr(original, "include_in_schema", False)
            if isinstance(original, APIWebSocketRoute):
                found.append(Route(service, "WS", path, route.endpoint, False))
                continue
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append(Route(service, method, path, route.endpoint, in_schema))
    return found


def service_modules() -> dict[str, Any]:
    for service in SERVICES:
        app(service)  # imports every module a route can reach
    return {name: module for name, module in sys.modules.items() if name.startswith("services.") and module}


def stream_params(service: str) -> type:
    """The dataclass a service's native socket parses its query into (``StreamParams``, wherever it lives)."""
    found = {getattr(m, "StreamParams") for n, m in service_modules().items()
             if n.startswith(f"services.{service}.") and dataclasses.is_dataclass(getattr(m, "StreamParams", None))}
    assert len(found) == 1, f"services.{service} should have one StreamParams dataclass, found {found}"
    return found.pop()


def _query_names(node: ast.AST) -> list[str]:
    """The constant names ``node`` itself reads from something whose name says ``query`` (``query.get("x")``,
    ``query["x"]``, ``ws.query_params.get("x")``, ``flag(query, "x")``), route paths aside."""
    names: list[Any] = []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        if "query" in ast.unparse(node.func.value) and node.args:
            names = [_const(node.args[0])]
    elif isinstance(node, ast.Subscript) and "query" in ast.unparse(node.value):
        names = [_const(node.slice)]
    elif isinstance(node, ast.Call) and any("query" in ast.unparse(a) for a in node.args[:1]):
        names = [_const(a) for a in node.args[1:2]]
    return [n for n in names if isinstance(n, str) and not n.startswith("/")]  # a route beside a query: no name


def native_query(service: str) -> dict[str, tuple[str, ...]]:
    """Wire query name -> the path of the ``StreamParams`` field it fills: ``("sample_rate",)``, or into a nested
    dataclass ``("resume", "at_s")``.

    A field is filled by the query name that is its own name, when the parser reads that name; otherwise by the
    names read in the expression passed for it where the module's parser calls ``StreamParams(...)``, following
    the local variables it is built from and the module's own functions it calls (``resume = parse_resume(query)``
    reads ``resume_at_s``...). A nested dataclass's fields are matched to those names by suffix (``at_s`` to
    ``resume_at_s``). A field no query name fills, or a name that fits no nested field, is an error here, so
    the check built on this compares every field's type and default with the reference, as before, under the
    name a client actually sends."""
    params = stream_params(service)
    module = sys.modules[params.__module__]
    tree = ast.parse(inspect.getsource(module))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    builders = {f.name: f for f in functions.values() for n in ast.walk(f)
                if isinstance(n, ast.Call) and ast.unparse(n.func) == params.__name__}
    assert len(builders) == 1, f"{module.__name__} should build {params.__name__} in one function, not {builders}"
    builder = builders.popitem()[1]
    assigned: dict[str, list[ast.AST]] = {}
    for n in ast.walk(builder):
        if isinstance(n, ast.Assign):
            for target in n.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(n.value)

    def reads(expr: ast.AST, seen: set[str]) -> set[str]:
        names: set[str] = set()
        for n in ast.walk(expr):
            names.update(_query_names(n))
            if isinstance(n, ast.Name) and n.id in assigned and n.id not in seen:
                seen.add(n.id)
                for value in assigned[n.id]:
                    names |= reads(value, seen)
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions
                  and n.func.id not in seen):
                seen.add(n.func.id)
                names |= reads(functions[n.func.id], seen)
        return names

    everything = reads(builder, set())
    call = next(n for n in ast.walk(builder) if isinstance(n, ast.Call) and ast.unparse(n.func) == params.__name__)
    fields = dataclasses.fields(params)
    arguments = {**{f.name: a for f, a in zip(fields, call.args)}, **{k.arg: k.value for k in call.keywords}}
    hints = typing.get_type_hints(params)
    found: dict[str, tuple[str, ...]] = {}
    for f in fields:
        if f.name in everything:
            found[f.name] = (f.name,)
            continue
        names = reads(arguments[f.name], set()) if f.name in arguments else set()
        assert names, f"{params.__module__}.{params.__name__}.{f.name}: no query parameter fills it"
        if dataclasses.is_dataclass(hints[f.name]):
            for name in sorted(names):
                inner = [g.name for g in dataclasses.fields(hints[f.name]) if name.endswith("_" + g.name)]
                assert len(inner) == 1, f"query parameter {name!r} fits no one field of {hints[f.name].__name__}"
                found[name] = (f.name, inner[0])
        else:
            assert len(names) == 1, f"{params.__name__}.{f.name} is filled from several parameters: {names}"
            found[names.pop()] = (f.name,)
    return found


# -- native events and messages (the classes) ---------------------------------------------------------------

def _placeholder(hint: Any) -> Any:
    present = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and present:
        return _placeholder(present[0])  # an optional field, present
    hint = typing.get_origin(hint) or hint
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return next(iter(hint))
    return {int: 0, float: 0.0, str: "", bool: False, list: [], dict: {}}.get(hint)


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def event_classes() -> list[type]:
    """Every concrete server-to-client event class (a base whose subclasses send its ``type`` is left out)."""
    service_modules()
    found = [c for c in _subclasses(Event) if dataclasses.is_dataclass(c) and c.__module__.startswith("services.")]
    return [c for c in found if not any(sub.type == c.type for sub in _subclasses(c))]


def wire_fields(cls: type) -> frozenset[str]:
    """The keys an event's own ``to_json()`` writes, ``type`` aside (an instance with placeholder values; a field
    that is None by default is given one too, for the key written only when it has a value)."""
    hints = typing.get_type_hints(cls)
    required = {f.name: _placeholder(hints[f.name]) for f in dataclasses.fields(cls)
                if f.default_factory is dataclasses.MISSING and f.default in (dataclasses.MISSING, None)}
    return frozenset(json.loads(cls(**required).to_json())) - {"type"}


def service_of(module: str) -> str | None:
    part = module.split(".")[1]
    return part if part in SERVICES else None


def native_events() -> list[WireObject]:
    events = [WireObject(c.type, wire_fields(c), True, c.__module__) for c in event_classes()]
    error = ServiceError(ErrorCode.INTERNAL, "").event()
    events.append(WireObject(error["type"], frozenset(error) - {"type"}, True, ServiceError.__module__))
    return events


def message_classes() -> list[type]:
    """Client message dataclasses: a ``type`` field whose default is the literal (``Commit``, ``Text``...)."""
    found = []
    for name, module in service_modules().items():
        for value in vars(module).values():
            if inspect.isclass(value) and dataclasses.is_dataclass(value) and value.__module__ == name:
                if isinstance({f.name: f.default for f in dataclasses.fields(value)}.get("type"), str):
                    found.append(value)
    return found


def message_type(cls: type) -> str:
    return {f.name: f.default for f in dataclasses.fields(cls)}["type"]


def client_messages() -> list[WireObject]:
    """Client message dataclasses and every message table's keys."""
    found: dict[tuple[str, str], WireObject] = {}
    for cls in message_classes():
        fields = frozenset(f.name for f in dataclasses.fields(cls)) - {"type"}
        found[(cls.__module__, message_type(cls))] = WireObject(message_type(cls), fields, True, cls.__module__)
    for name, module in service_modules().items():
        for value in vars(module).values():
            # A table keyed by URL paths (routes to their handlers) is no message table.
            if (isinstance(value, dict) and value and all(isinstance(k, str) and not k.startswith("/") for k in value)
                  and all(callable(v) and not inspect.isclass(v) for v in value.values())):
                for kind in value:
                    found.setdefault((name, kind), WireObject(kind, frozenset(), False, name))
    return list(found.values())


# -- the source of the services package -------------------------------------------------------------------

@functools.cache
def _sources() -> tuple[tuple[str, ast.Module], ...]:
    root = Path(services.__file__).parent
    return tuple((str(p.relative_to(root.parent)), ast.parse(p.read_text())) for p in sorted(root.rglob("*.py")))


def _const(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _is_type_read(node: ast.AST) -> bool:
    """``x.get("type")`` or ``x["type"]``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _const(node.args[0]) == "type"
    return isinstance(node, ast.Subscript) and _const(node.slice) == "type"


def _is_asgi(kind: str) -> bool:
    return kind.split(".")[0] in ASGI_TYPES


def literal_objects() -> list[WireObject]:
    """Every JSON object literal with a constant ``type`` and every ``type`` a client message is compared with."""
    found = []
    for where, tree in _sources():
        type_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(_is_type_read(n) for n in ast.walk(node.value)):
                type_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = [_const(k) for k in node.keys]
                if "type" in keys:
                    kind = _const(node.values[keys.index("type")])
                    if isinstance(kind, str) and not _is_asgi(kind):
                        fields = frozenset(k for k in keys if isinstance(k, str)) - {"type"}
                        found.append(WireObject(kind, fields, False, f"{where}:{node.lineno}"))
            elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id in type_names:
                for right in node.comparators:
                    values = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
                    for value in values:
                        kind = _const(value)
                        if isinstance(kind, str) and not _is_asgi(kind):
                            found.append(WireObject(kind, frozenset(), False, f"{where}:{node.lineno}"))
    return found


def all_wire_objects() -> list[WireObject]:
    return native_events() + client_messages() + literal_objects()


def query_parameters() -> dict[str, str]:
    """name -> where: every constant read from something whose name says ``query`` (``query.get("x")``,
    ``query["x"]``, ``ws.query_params.get("x")``, ``flag(query, "x")``)."""
    found: dict[str, str] = {}
    for where, tree in _sources():
        for node in ast.walk(tree):
            for name in _query_names(node):
                found.setdefault(name, f"{where}:{node.lineno}")
    return found


# -- Wyoming -----------------------------------------------------------------------------------------------

_PLACEHOLDERS = {"int": 0, "bytes": b"", "str": ""}


def _wyoming_type(cls: type) -> str:
    """An event class's wire ``type``: what an instance with placeholder values writes."""
    required = {f.name: _PLACEHOLDERS.get(getattr(f.type, "__name__", str(f.type)), [])
                for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return cls(**required).event().type


def wyoming_events() -> dict[str, str]:
    """type -> where: every Wyoming event class (``wyoming.event.Eventable``) the code imports from the library."""
    from wyoming.event import Eventable

    found: dict[str, str] = {}
    for where, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wyoming."):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    cls = getattr(module, alias.name)
                    if inspect.isclass(cls) and issubclass(cls, Eventable) and not inspect.isabstract(cls):
                        found.setdefault(_wyoming_type(cls), f"{where}:{node.lineno}")
    return found


# -- errors ------------------------------------------------------------------------------------------------

def error_codes() -> dict[str, tuple[int, int, bool]]:
    """code -> (HTTP status, WebSocket close code, fatal on a WebSocket)."""
    out = {}
    for code in ErrorCode:
        err = ServiceError(code, "")
        out[code.value] = (err.http_status, err.close_code, err.fatal)
    return out


def close_codes() -> dict[int, str]:
    """code -> where: every close code an error maps to and every constant one the code closes with."""
    found = {close: "ErrorCode" for _, close, _ in error_codes().values()}
    for where, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                name = ast.unparse(node.func)
                code = _const(node.args[0])
                if (name == "CloseRequest" or name.endswith(".close")) and isinstance(code, int) and code >= 1000:
                    found.setdefault(code, f"{where}:{node.lineno}")
    return found
