"""Voices: the built-in ones of the engine and the cloned ones in the voice store.

:class:`VoiceStore` owns the store directory. Each cloned voice is a folder
named by its id (32 hex characters; nothing else is ever joined to the store
path, so an id cannot escape it) holding ``reference.wav``,
``conditionals.bin`` (the engine's computed voice) and ``meta.json``. Every
file is written to a temporary name, fsynced and moved into place with
``os.replace``; ``meta.json`` is written last and removed first, so a voice
exists exactly when its metadata does and a crash never leaves a half voice
visible. The store is read from disk on every lookup, so every instance sharing
the directory sees the same voices, across restarts. Creating a voice counts
the store and writes it under an exclusive lock on ``.lock`` in the directory
(``flock``: held across requests and across instances sharing the store), so
``max_voices`` holds however many clones race.

:class:`VoiceCatalog` resolves what a request names (a built-in id, an OpenAI
alias such as ``alloy``, a cloned id or name) to a :class:`ResolvedVoice`,
keeping a bounded LRU cache of loaded conditionals (checked against the file's
mtime; every file access runs off the event loop; a damaged file is ``internal``
with a clear message, never a stray exception). :func:`check_reference` checks
an uploaded reference recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.audio import float_to_pcm16, wav_header
from ..common.errors import ErrorCode, ServiceError

VOICE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
NAME_MAX_CHARS = 100
META = "meta.json"
REFERENCE = "reference.wav"
CONDITIONALS = "conditionals.bin"
LOCK = ".lock"

log = logging.getLogger(__name__)


@dataclass
class VoiceInfo:
    id: str
    name: str
    engine: str
    cloned: bool
    duration: float | None = None
    created_at: float | None = None

    def listing(self) -> dict:
        return {"id": self.id, "name": self.name, "engine": self.engine, "cloned": self.cloned}

    def detail(self) -> dict:
        out = self.listing()
        if self.duration is not None:
            out["duration"] = self.duration
        return out


def is_voice_id(value: str) -> bool:
    return bool(VOICE_ID_RE.fullmatch(value))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VoiceStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, voice_id: str) -> Path:
        if not is_voice_id(voice_id):
            raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {voice_id[:80]!r} (voice ids are 32 hex characters)")
        return self.root / voice_id

    def conditionals_path(self, voice_id: str) -> Path:
        return self._dir(voice_id) / CONDITIONALS

    def get(self, voice_id: str) -> VoiceInfo | None:
        if not is_voice_id(voice_id):
            return None
        try:
            data = json.loads((self.root / voice_id / META).read_text(encoding="utf-8"))
            return VoiceInfo(**{k: data[k] for k in ("id", "name", "engine", "cloned", "duration", "created_at")})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def list(self) -> list[VoiceInfo]:
        out = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return []
        for entry in entries:
            if entry.is_dir() and is_voice_id(entry.name):
                info = self.get(entry.name)
                if info is not None:
                    out.append(info)
        out.sort(key=lambda v: (v.created_at or 0, v.id))
        return out

    def create(self, name: str, engine: str, duration_s: float, reference: np.ndarray, reference_rate_hz: int,
               write_conditionals: Callable[[Path], None], max_voices: int | None = None) -> VoiceInfo:
        """Write a new voice; ``write_conditionals(path)`` serializes the engine's conditionals to ``path``.
        With ``max_voices``, a full store refuses it (``invalid_parameter``), checked under the store lock."""
        with self._locked():
            if max_voices is not None and len(self.list()) >= max_voices:
                raise ServiceError(ErrorCode.INVALID_PARAMETER, f"the voice store is full ({max_voices} voices)")
            return self._create(name, engine, duration_s, reference, reference_rate_hz, write_conditionals)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _create(self, name: str, engine: str, duration_s: float, reference: np.ndarray, reference_rate_hz: int,
                write_conditionals: Callable[[Path], None]) -> VoiceInfo:
        voice_id = uuid.uuid4().hex
        folder = self._dir(voice_id)
        folder.mkdir()
        try:
            pcm = float_to_pcm16(reference)
            _atomic_write(folder / REFERENCE, wav_header(reference_rate_hz, pcm.size) + pcm.astype("<i2").tobytes())
            tmp = folder / f".{CONDITIONALS}.{uuid.uuid4().hex}.tmp"
            try:
                write_conditionals(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, folder / CONDITIONALS)
            finally:
                tmp.unlink(missing_ok=True)
            info = VoiceInfo(voice_id, name, engine, True, round(duration_s, 3), round(time.time(), 3))
            _atomic_write(folder / META, json.dumps(asdict(info)).encode())
            _fsync_dir(folder)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return info

    def delete(self, voice_id: str) -> bool:
        folder = self._dir(voice_id)
        try:
            (folder / META).unlink()  # the voice is gone from this instant, for every instance
        except FileNotFoundError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True


@dataclass
class ResolvedVoice:
    id: str
    name: str
    cloned: bool
    conditionals: Any = None


class VoiceCatalog:
    def __init__(self, engine, store: VoiceStore, *, default: str | None, aliases: list[str],
                 cache_size: int) -> None:
        self.engine = engine
        self.store = store
        self.aliases = {a.lower() for a in aliases}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        builtin = list(engine.builtin_voices())
        # A cloning engine without built-in voices may run with no default: requests must name a voice.
        self.default = default or (builtin[0] if builtin else None)
        if self.default is not None and self.default not in builtin and not is_voice_id(self.default):
            raise ValueError(f"voices.default {self.default!r} is neither a built-in voice ({builtin}) nor a voice id")

    def builtin(self) -> list[VoiceInfo]:
        return [VoiceInfo(vid, vid, self.engine.name, False) for vid in self.engine.builtin_voices()]

    def all(self) -> list[VoiceInfo]:
        return self.builtin() + self.store.list()

    def info(self, voice_id: str) -> VoiceInfo:
        for v in self.builtin():
            if v.id == voice_id:
                return v
        found = self.store.get(voice_id)
        if found is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {voice_id[:80]!r}")
        return found

    def _find_cloned(self, requested: str) -> VoiceInfo | None:
        if is_voice_id(requested):
            return self.store.get(requested)
        for v in self.store.list():
            if v.name == requested:
                return v
        return None

    async def resolve(self, requested: str | None) -> ResolvedVoice:
        """The voice a request speaks with; raises not_found / not_supported."""
        name = (requested or "").strip() or self.default
        if name is not None and name.lower() in self.aliases:
            name = self.default
        if name is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "no default voice is configured (voices.default); name a voice")
        if name in self.engine.builtin_voices():
            return ResolvedVoice(name, name, False)
        info = await asyncio.to_thread(self._find_cloned, name)
        if info is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"unknown voice {name[:80]!r}; GET /v1/voices lists them")
        if info.engine != self.engine.name:
            raise ServiceError(
                ErrorCode.NOT_SUPPORTED,
                f"voice {info.id} ({info.name!r}) is a cloned {info.engine} voice; this instance runs the "
                f"{self.engine.name} engine: use an instance started with TTS_ENGINE__NAME={info.engine}")
        conds = await self._conditionals(info.id)
        return ResolvedVoice(info.id, info.name, True, conds)

    async def _conditionals(self, voice_id: str) -> Any:
        path = self.store.conditionals_path(voice_id)
        try:
            mtime_ns = (await asyncio.to_thread(path.stat)).st_mtime_ns  # a shared store may be on NFS
        except FileNotFoundError:
            raise ServiceError(ErrorCode.NOT_FOUND, f"voice {voice_id} was deleted") from None
        hit = self._cache.get(voice_id)
        if hit is not None and hit[0] == mtime_ns:
            self._cache.move_to_end(voice_id)
            return hit[1]
        try:
            conds = await asyncio.to_thread(self.engine.load_conditionals, path)
        except FileNotFoundError:
            raise ServiceError(ErrorCode.NOT_FOUND, f"voice {voice_id} was deleted") from None
        except ServiceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file (torch/pickle errors of any type)
            log.warning("cannot load conditionals", extra={"voice": voice_id, "error": repr(exc)[:200]})
            raise ServiceError(
                ErrorCode.INTERNAL, f"voice {voice_id}: its stored conditionals cannot be loaded "
                                    f"({type(exc).__name__}); the voice store entry is damaged: delete the voice "
                                    f"and clone it again") from None
        self._cache[voice_id] = (mtime_ns, conds)
        self._cache.move_to_end(voice_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return conds

    def forget(self, voice_id: str) -> None:
        self._cache.pop(voice_id, None)

    @property
    def cached(self) -> int:
        return len(self._cache)


def check_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "name: must not be empty")
    if len(name) > NAME_MAX_CHARS or any(ord(c) < 32 for c in name):
        raise ServiceError(ErrorCode.INVALID_PARAMETER, f"name: at most {NAME_MAX_CHARS} printable characters")
    return name


def check_reference(audio: np.ndarray, rate_hz: int, speech_s: float, *, min_s: float, max_s: float,
                    min_speech_s: float) -> float:
    """Duration of a reference recording, or ``bad_audio`` saying what is wrong with it."""
    duration_s = audio.size / rate_hz
    if duration_s < min_s:
        raise ServiceError(ErrorCode.BAD_AUDIO, f"reference audio is {duration_s:.1f} s; it must be {min_s:g} to "
                                                f"{max_s:g} s of speech")
    if duration_s > max_s:
        raise ServiceError(ErrorCode.BAD_AUDIO, f"reference audio is {duration_s:.1f} s; it must be {min_s:g} to "
                                                f"{max_s:g} s of speech")
    if not np.isfinite(audio).all() or float(np.max(np.abs(audio), initial=0.0)) < 1e-3:
        raise ServiceError(ErrorCode.BAD_AUDIO, "reference audio is silent")
    if speech_s < min_speech_s:
        raise ServiceError(ErrorCode.BAD_AUDIO, f"reference audio contains {speech_s:.1f} s of speech; at least "
                                                f"{min_speech_s:g} s is needed")
    return duration_s
