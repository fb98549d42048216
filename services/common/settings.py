"""Loading one validated settings object from YAML plus environment.

Each service declares its settings as pydantic models (field docs live there).
:func:`load_settings` reads the service's YAML file, overlays environment
variables named ``PREFIX_SECTION__KEY`` (``ASR_SERVER__PORT=8011``), validates
everything once at start-up and raises :class:`SettingsError` with one line per
problem, naming the key, so a typo in a unit file fails loudly.
:class:`SchedulerSettings` and :class:`ServerSettings` hold the fields both
services' ``scheduler`` and ``server`` sections share; each service subclasses them.
:class:`WyomingSettings` is both services' ``wyoming`` section as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base for settings sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class SettingsError(ValueError):
    pass


def _env_overrides(prefix: str, environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    head = prefix.upper() + "_"
    for name, raw in environ.items():
        if not name.startswith(head) or name == head:
            continue
        path = [part.lower() for part in name[len(head):].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{name}: conflicts with another variable")
        # YAML parsing gives "8011" -> 8011, "true" -> True, "[a, b]" -> list.
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    model: type[T],
    *,
    path: str | os.PathLike | None,
    env_prefix: str,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Build ``model`` from the YAML at ``path`` (optional), the environment and ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{p}: top level must be a mapping")
        data = loaded
    data = _merge(data, _env_overrides(env_prefix, dict(os.environ if environ is None else environ)))
    if overrides:
        data = _merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            env = env_prefix.upper() + "_" + "__".join(str(p).upper() for p in err["loc"])
            lines.append(f"  {key} (env {env}): {err['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None


class SchedulerSettings(Section):
    """What every model scheduler has; each service adds its batching and queue limits."""

    call_timeout_s: float = Field(120.0, gt=0)
    """A model call (one batch) that has not returned after this long is treated as hung: its requests fail
    with ``internal``, the instance refuses new work and ``/ready`` says 503 ``stalled`` until it returns."""


class WyomingSettings(Section):
    """The ``wyoming`` section both services have: a Wyoming server (Home Assistant's voice protocol) in the same
    process, over the same sessions (docs/wyoming.md)."""

    host: str | None = None
    """Bind address of the Wyoming server (default: ``server.host``)."""
    port: int = Field(0, ge=0, le=65535)
    """Its TCP port; 0 leaves it off. Home Assistant's conventions: 10300 for speech-to-text, 10200 for
    text-to-speech."""


class ServerSettings(Section):
    """The ``server`` section fields both services share; each service subclasses it, adds its own limits
    and sets its defaults (port, session count, timeouts)."""

    host: str = "127.0.0.1"
    """Bind address."""
    port: int = Field(8000, ge=1, le=65535)
    max_connections: int = Field(16, ge=1)
    """Concurrent WebSocket sessions; more are refused with overloaded/1013 and /ready says 503."""
    max_upload_bytes: int = Field(20 << 20, ge=1024)
    """Largest HTTP body (413 above)."""
    idle_timeout_s: float = Field(30.0, gt=0)
    """A session that sends nothing for this long is closed (timeout/1000)."""
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    """Largest WebSocket text message accepted, in UTF-8 bytes (too_large/1009 above)."""
    send_timeout_s: float = Field(30.0, gt=0)
    """A client that takes nothing we send for this long (a WebSocket frame, a chunk of a streamed HTTP
    response) is dropped and its slot freed."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long open sessions may take to finish their utterance or reply."""
    api_keys: list[str] = Field(default_factory=list)
    """API keys (``name:key`` or ``key``, 16+ characters); empty with no file: no authentication."""
    api_keys_file: str | None = None
    """A file with one key a line (``name:key``), read at start-up; for systemd EnvironmentFile or secrets."""
    stall_exit_s: float = Field(300.0, ge=0)
    """A model call stalled this long (past ``scheduler.call_timeout_s``) ends the process with status 70 so its
    supervisor restarts it (systemd's watchdog usually acts first; 0: never)."""
    heap_trim_interval_s: float = Field(30.0, ge=0)
    """How often freed heap memory is handed back to the system (glibc ``malloc_trim``); 0 turns it off."""
    malloc_arena_max: int = Field(4, ge=0, le=64)
    """glibc's ``M_ARENA_MAX``: how many heaps the threads allocate from (0: glibc's default, 8 per core).
    More arenas, less lock contention and more memory held in fragments (RELIABILITY.md, "Memory")."""
    log_level: str = "info"
    log_json: bool = True
