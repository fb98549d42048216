"""Unit tests of services/tts/voices.py: the voice store on disk, id validation, the catalog, reference checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import ErrorCode, ServiceError
from services.tts.voices import VoiceCatalog, VoiceStore, check_name, check_reference

RATE = 24000


def make_voice(store: VoiceStore, name: str = "alice", payload: bytes = b"conds-A"):
    return store.create(name, "chatterbox", 5.0, np.zeros(RATE * 5, np.float32) + 0.1, RATE,
                        lambda path: Path(path).write_bytes(payload))


def test_create_list_get_delete_and_files(tmp_path):
    store = VoiceStore(tmp_path)
    info = make_voice(store)
    assert len(info.id) == 32
    folder = tmp_path / info.id
    assert sorted(p.name for p in folder.iterdir()) == ["conditionals.bin", "meta.json", "reference.wav"]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # atomic writes leave no temporaries
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["name"] == "alice" and meta["engine"] == "chatterbox" and meta["cloned"] is True
    assert [v.id for v in store.list()] == [info.id]
    assert store.get(info.id).listing() == {"id": info.id, "name": "alice", "engine": "chatterbox", "cloned": True}
    assert store.delete(info.id) is True
    assert store.list() == [] and not folder.exists()
    assert store.delete(info.id) is False


def test_persistence_and_sharing_between_instances(tmp_path):
    a, b = VoiceStore(tmp_path), VoiceStore(tmp_path)  # two instances, one directory
    info = make_voice(a)
    assert [v.id for v in VoiceStore(tmp_path).list()] == [info.id]  # a "restart" sees it
    assert b.get(info.id).name == "alice"
    assert b.delete(info.id)
    assert a.get(info.id) is None and a.list() == []


def test_failed_write_leaves_nothing(tmp_path):
    store = VoiceStore(tmp_path)

    def broken(path):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.create("bob", "chatterbox", 5.0, np.zeros(RATE * 5, np.float32), RATE, broken)
    assert [p for p in tmp_path.iterdir() if p.name != ".lock"] == []  # the store's lock file stays
    assert store.list() == []


def test_half_written_voice_is_invisible(tmp_path):
    store = VoiceStore(tmp_path)
    orphan = tmp_path / ("ab" * 16)
    orphan.mkdir()
    (orphan / "conditionals.bin").write_bytes(b"x")  # a crash before meta.json
    (tmp_path / "not-a-voice").mkdir()
    assert store.list() == [] and store.get("ab" * 16) is None


@pytest.mark.parametrize("bad", ["../../etc", "..", "../" + "a" * 32, "/etc/passwd", "A" * 32, "a" * 31,
                                 "a" * 32 + "/../x", "%2e%2e", ""])
def test_ids_cannot_escape_the_store(tmp_path, bad):
    root = tmp_path / "store"
    store = VoiceStore(root)
    keep = make_voice(store)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    assert store.get(bad) is None
    with pytest.raises(ServiceError) as err:
        store.delete(bad)
    assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ServiceError):
        store.conditionals_path(bad)
    assert outside.read_text() == "keep me"
    assert [v.id for v in store.list()] == [keep.id]


class _Engine:
    name = "chatterbox"
    can_clone = True
    lanes = 1

    def __init__(self):
        self.loads = 0

    def builtin_voices(self):
        return {"builtin-a": 24000}

    def sample_rate_hz(self, voice_id):
        return 24000

    def load_conditionals(self, path):
        self.loads += 1
        return Path(path).read_bytes()


def test_catalog_resolves_aliases_ids_names_and_caches(tmp_path):
    store = VoiceStore(tmp_path)
    engine = _Engine()
    catalog = VoiceCatalog(engine, store, default=None, aliases=["alloy"], cache_size=2)
    voices = [make_voice(store, f"v{i}", f"conds-{i}".encode()) for i in range(3)]

    async def go():
        assert (await catalog.resolve(None)).id == "builtin-a"
        assert (await catalog.resolve("alloy")).id == "builtin-a"
        r = await catalog.resolve(voices[0].id)
        assert r.cloned and r.conditionals == b"conds-0"
        assert (await catalog.resolve("v1")).conditionals == b"conds-1"  # by name
        await catalog.resolve(voices[0].id)
        assert engine.loads == 2  # cached
        await catalog.resolve(voices[2].id)
        assert catalog.cached == 2  # bounded LRU
        with pytest.raises(ServiceError) as err:
            await catalog.resolve("nobody")
        assert err.value.code is ErrorCode.NOT_FOUND
        store.delete(voices[2].id)
        with pytest.raises(ServiceError) as err:
            await catalog.resolve(voices[2].id)  # deleted by "another instance": not served from cache
        assert err.value.code is ErrorCode.NOT_FOUND

    asyncio.run(go())


def test_cloned_voice_of_another_engine_names_the_engine(tmp_path):
    store = VoiceStore(tmp_path)
    info = make_voice(store)

    class Piper(_Engine):
        name = "piper"
        can_clone = False

    catalog = VoiceCatalog(Piper(), store, default=None, aliases=[], cache_size=2)
    with pytest.raises(ServiceError) as err:
        asyncio.run(catalog.resolve(info.id))
    assert err.value.code is ErrorCode.NOT_SUPPORTED and "chatterbox" in err.value.message


def test_reference_checks():
    limits = dict(min_s=3.0, max_s=30.0, min_speech_s=1.0)
    rng = np.random.default_rng(0)
    speechy = (rng.standard_normal(RATE * 5) * 0.1).astype(np.float32)
    assert check_reference(speechy, RATE, 4.0, **limits) == pytest.approx(5.0)
    for audio, speech_s, what in [
        (speechy[:RATE], 1.0, "1.0 s"),  # one second
        (np.zeros(RATE * 40, np.float32) + 0.1, 30.0, "40.0 s"),  # too long
        (np.zeros(RATE * 5, np.float32), 0.0, "silent"),  # digital silence
        (speechy, 0.2, "speech"),  # noise, no speech
    ]:
        with pytest.raises(ServiceError) as err:
            check_reference(audio, RATE, speech_s, **limits)
        assert err.value.code is ErrorCode.BAD_AUDIO and what in err.value.message


def test_names():
    assert check_name("  My   voice ") == "My voice"
    for bad in ("", "   ", "x" * 101, "a\x00b"):
        with pytest.raises(ServiceError):
            check_name(bad)


def test_max_voices_holds_when_clones_race_across_instances(tmp_path):
    """Eight clones race for a store that holds three, each through its own VoiceStore (as separate instances
    sharing the directory would): the count and the write happen under one lock, so exactly three land."""
    import threading

    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def slow_conditionals(path):
        Path(path).write_bytes(b"conds")

    def clone(i: int) -> None:
        store = VoiceStore(tmp_path)  # an instance of its own
        barrier.wait()
        try:
            store.create(f"v{i}", "chatterbox", 5.0, np.full(24000 * 3, 0.1, np.float32), 24000, slow_conditionals,
                         max_voices=3)
            outcomes.append("created")
        except ServiceError as err:
            outcomes.append(err.code.value)

    threads = [threading.Thread(target=clone, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created"] * 3 + ["invalid_parameter"] * 5
    assert len(VoiceStore(tmp_path).list()) == 3
