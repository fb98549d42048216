"""The Chatterbox engine on its real library code, on CPU, with a randomly initialised checkpoint.

Needs the ``chatterbox`` extra, which CI does not install (torch and chatterbox-streaming are several GB),
so this module is skipped there. Run it on its own (the dev group, pytest included, is synced too):

    UV_PROJECT_ENVIRONMENT=.venv-chatterbox uv sync --extra chatterbox && \
        .venv-chatterbox/bin/python -m pytest tests/test_tts_chatterbox.py -q

It needs about 8 GB of RAM and 4 GB of temporary disk, no network and no GPU.

What is real: chatterbox-streaming 0.1.2's own model classes (``VoiceEncoder``, ``T3`` with the default
``T3Config``, ``S3Gen``), randomly initialised and saved as the state dicts ``ChatterboxTTS.from_local``
reads (``ve.pt``, ``t3_cfg.pt``, ``s3gen.pt``), a character-level ``tokenizer.json`` that the library's
``EnTokenizer`` accepts, and a ``conds.pt`` written by the library's ``Conditionals.save`` from
``prepare_conditionals`` on a real recording. The engine is then built by our own code
(``ChatterboxEngine.from_settings`` -> ``ChatterboxTTS.from_local``), and everything else goes through our
wrapper: streaming synthesis, barge-in, cloning, the voice store's save/load, per-request voices, and
the real service in a subprocess over real sockets. The audio is noise (random weights); only its form
is checked (float32 chunks at the engine's rate, non-empty, finite).

Sizes: full. ``from_local`` builds ``T3()`` with the default ``T3Config``, whose only LLaMA config in the
library is ``Llama_520M`` (``LLAMA_CONFIGS`` has no smaller one and nothing in the checkpoint layout
chooses one), and ``S3Gen()``/``VoiceEncoder()`` take no size arguments; so the checkpoint has the real
shapes (about 2.1 GB of t3_cfg.pt, 1 GB of s3gen.pt, in a temporary directory).

Speech tokens: T3's head has ``speech_tokens_dict_size`` (8194) outputs but S3Gen embeds only the 6561
real speech tokens (6561/6562 are start/stop, the rest unused); a trained T3 never samples the unused
ones, an untrained one samples them about one time in five and S3Gen's ``nn.Embedding`` then raises
IndexError. So the random ``speech_head`` is made to behave like a trained one in that respect only: its
rows for ids >= 6561 are zeroed and the others scaled by ``SPEECH_HEAD_SCALE``, so that after top-p
filtering only real speech tokens are sampled (and the stop token never is).

Bounded runtime: T3 here never samples its stop token, and chatterbox-streaming hard-codes
``max_new_tokens=1000`` in ``generate_stream``. In-process, the library's ``ChatterboxTTS.inference_stream``
is wrapped to cap that at ``MAX_NEW_TOKENS`` (the only change to the library's code path here; it also
bounds the engine's warm-up). The subprocess runs the library unchanged: its checkpoint has no
``conds.pt`` (so no warm-up and no built-in voice, the documented configuration where requests name a
cloned voice) and the WebSocket client barges in after the first audio. References are short (3.5 s
in-process, 5 s uploaded): S3Gen's flow matching runs over the reference's mel frames for every chunk,
which is most of the CPU time.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import importlib.util
import json
import string
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

if importlib.util.find_spec("chatterbox") is None:  # a broken install (found but failing) must fail, not skip
    pytest.skip("needs the chatterbox extra: UV_PROJECT_ENVIRONMENT=.venv-chatterbox uv sync --extra chatterbox && "
                ".venv-chatterbox/bin/python -m pytest tests/test_tts_chatterbox.py -q", allow_module_level=True)

import torch  # noqa: E402
import websockets  # noqa: E402
from chatterbox.models.s3gen import S3GEN_SR, S3Gen  # noqa: E402
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE  # noqa: E402
from chatterbox.models.t3 import T3  # noqa: E402
from chatterbox.models.t3.modules.t3_config import T3Config  # noqa: E402
from chatterbox.models.tokenizers import EnTokenizer  # noqa: E402
from chatterbox.models.tokenizers.tokenizer import EOT, SOT, SPACE, SPECIAL_TOKENS, UNK  # noqa: E402
from chatterbox.models.voice_encoder import VoiceEncoder  # noqa: E402
from chatterbox.tts import ChatterboxTTS, Conditionals  # noqa: E402

from conftest import DATA, ServiceProcess, read_wav  # noqa: E402
from services.common.errors import ErrorCode, ServiceError  # noqa: E402
from services.tts.chatterbox import BUILTIN_VOICE, ChatterboxEngine  # noqa: E402
from services.tts.engine import CloneJob, SynthesisJob  # noqa: E402
from services.tts.settings import load  # noqa: E402
from services.tts.voices import VoiceCatalog, VoiceStore  # noqa: E402
from tts_support import Received, recv_until  # noqa: E402

# Loading 3 GB of weights and running a 520M-parameter LLaMA on a small CPU takes minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

CHUNK_TOKENS = 4  # chatterbox.chunk_tokens: small chunks, so the first audio comes after a few T3 steps
CONTEXT_TOKENS = 8  # chatterbox.context_window
MAX_NEW_TOKENS = {"now": 8}  # in-process cap of the library's hard-coded 1000: 2 chunks (a test may lower it)
REFERENCE_S = 3.5  # in-process references are cut to this: S3Gen's CFM runs over prompt + new mel frames
SPEECH_HEAD_SCALE = 20.0  # random logits spread wide enough that top-p keeps only real speech tokens
CHECKPOINT_FILES = ("ve.pt", "t3_cfg.pt", "s3gen.pt", "tokenizer.json")

BUILTIN_REFERENCE = DATA / "asr" / "quilter.wav"  # conds.pt, the checkpoint's built-in voice
VOICE_REFERENCES = {"jfk": DATA / "asr" / "jfk.wav", "wizard": DATA / "asr" / "wizard.wav"}


def reference(path: Path, seconds: float = REFERENCE_S) -> tuple[np.ndarray, int]:
    """The first ``seconds`` of a real recording, as float32."""
    samples, rate = read_wav(path)
    return samples[:int(seconds * rate)].astype(np.float32) / 32768.0, rate


def write_tokenizer(path: Path) -> None:
    """A character-level ``tokenizer.json`` (BPE without merges) with the special tokens EnTokenizer uses.

    EnTokenizer replaces spaces with ``[SPACE]`` and asserts ``[START]``/``[STOP]`` are in the vocabulary;
    ``[STOP]`` is id 0 like T3Config.stop_text_token. All ids stay below T3Config.text_tokens_dict_size."""
    from tokenizers import Tokenizer, models

    vocab = {EOT: 0, UNK: 1, SPACE: 2}
    for ch in string.ascii_letters + string.digits + ".,!?'\"-()":
        vocab[ch] = len(vocab)
    for token in SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    assert SOT in vocab and max(vocab.values()) < T3Config.text_tokens_dict_size
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The directory ``ChatterboxTTS.from_local`` reads, from the library's own classes, randomly initialised."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("chatterbox-checkpoint")
    started = time.perf_counter()
    ve, t3, s3gen = VoiceEncoder().eval(), T3(T3Config()).eval(), S3Gen().eval()
    with torch.no_grad():  # see "Speech tokens" above
        head = t3.speech_head.weight  # (T3Config.speech_tokens_dict_size, dim)
        head[SPEECH_VOCAB_SIZE:] = 0
        head[:SPEECH_VOCAB_SIZE] *= SPEECH_HEAD_SCALE
    torch.save(ve.state_dict(), folder / "ve.pt")
    torch.save(t3.state_dict(), folder / "t3_cfg.pt")
    torch.save(s3gen.state_dict(), folder / "s3gen.pt")
    write_tokenizer(folder / "tokenizer.json")
    # The built-in voice, computed by the library itself from a real recording.
    model = ChatterboxTTS(t3, s3gen, ve, EnTokenizer(str(folder / "tokenizer.json")), "cpu")
    cut = tmp_path_factory.mktemp("reference") / "builtin.wav"
    samples, rate = read_wav(BUILTIN_REFERENCE)
    with wave.open(str(cut), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples[:int(REFERENCE_S * rate)].tobytes())
    with torch.no_grad():
        model.prepare_conditionals(str(cut), exaggeration=0.5)
    model.conds.save(folder / "conds.pt")
    del model, ve, t3, s3gen
    gc.collect()
    sizes = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(folder.iterdir())}
    print(f"\nrandom checkpoint written in {time.perf_counter() - started:.1f} s: {sizes} MB")
    return folder


def _capped_inference_stream():
    original = ChatterboxTTS.inference_stream

    def inference_stream(self, **kwargs):
        kwargs["max_new_tokens"] = min(kwargs.get("max_new_tokens", 1000), MAX_NEW_TOKENS["now"])
        return original(self, **kwargs)

    return inference_stream


@pytest.fixture(scope="module")
def engine(checkpoint):
    """Our engine, built from settings like the service builds it (warm-up included)."""
    settings = load(engine={"name": "chatterbox", "device": "cpu"},
                    chatterbox={"checkpoint_dir": str(checkpoint), "chunk_tokens": CHUNK_TOKENS,
                                "context_window": CONTEXT_TOKENS})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChatterboxTTS, "inference_stream", _capped_inference_stream())
        started = time.perf_counter()
        built = ChatterboxEngine.from_settings(settings)
        print(f"\nengine loaded and warmed up in {time.perf_counter() - started:.1f} s")
        yield built


@pytest.fixture(scope="module")
def voices(engine) -> dict:
    """Two voices cloned through our clone path from real recordings."""
    out = {}
    for name, path in VOICE_REFERENCES.items():
        audio, rate = reference(path)
        out[name] = engine.clone(CloneJob(audio, rate))
    return out


def speak(engine, text: str, voice_id: str, conds=None, stop_after: int | None = None):
    chunks: list[tuple[np.ndarray, int]] = []
    job = SynthesisJob(text, voice_id, conds)

    def sink(samples, rate):
        chunks.append((np.array(samples, copy=True), rate))
        if stop_after is not None and len(chunks) >= stop_after:
            job.cancelled.set()

    job.sink = sink
    return engine.synthesize(job), chunks


def assert_audio(chunks, rate: int) -> None:
    assert chunks, "no audio chunk"
    for samples, chunk_rate in chunks:
        assert chunk_rate == rate
        assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0
        assert np.isfinite(samples).all()
    assert np.abs(np.concatenate([s for s, _ in chunks])).max() > 0  # noise, but not silence


def tensors(conds) -> dict[str, object]:
    """Every field of a Conditionals, flattened (``t3.speaker_emb``, ``gen.embedding``, ...)."""
    out = {f"t3.{k}": v for k, v in conds.t3.__dict__.items()}
    out.update({f"gen.{k}": v for k, v in conds.gen.items()})
    return out


def assert_same_conds(a, b) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key, va in ta.items():
        vb = tb[key]
        if torch.is_tensor(va):
            assert torch.is_tensor(vb) and va.shape == vb.shape and torch.equal(va, vb), key
        else:
            assert va == vb, key


# -- the checkpoint --------------------------------------------------------------------------

def test_checkpoint_is_in_the_layout_from_local_reads(checkpoint):
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(CHECKPOINT_FILES + ("conds.pt",))
    tokenizer = EnTokenizer(str(checkpoint / "tokenizer.json"))
    ids = tokenizer.encode("Hello there, this is a test.")
    assert ids and tokenizer.tokenizer.token_to_id(UNK) not in ids
    assert tokenizer.decode(ids) == "Hello there, this is a test."
    conds = Conditionals.load(checkpoint / "conds.pt")
    assert conds.t3.speaker_emb.shape == (1, 256) and conds.t3.cond_prompt_speech_tokens.shape[0] == 1


# -- our engine on the real model, in-process --------------------------------------------------

def test_engine_loads_and_streams_the_builtin_voice(engine):
    rate = engine.sample_rate_hz(None)
    assert rate == S3GEN_SR == 24000 and engine.sample_rate_hz(BUILTIN_VOICE) == rate
    assert engine.builtin_voices() == {BUILTIN_VOICE: rate}
    assert engine._model.conds is None  # the model keeps no voice between requests
    result, chunks = speak(engine, "Hello there, this is a test.", BUILTIN_VOICE)
    assert_audio(chunks, rate)
    assert not result.cancelled and result.chunks == len(chunks)
    assert result.audio_s == pytest.approx(sum(s.size for s, _ in chunks) / rate)
    assert engine._model.conds is None
    with pytest.raises(ServiceError) as err:
        engine.synthesize(SynthesisJob("Hello.", "no-such-voice"))
    assert err.value.code == ErrorCode.NOT_FOUND


def test_barge_in_stops_between_chunks(engine):
    result, chunks = speak(engine, "This sentence is interrupted.", BUILTIN_VOICE, stop_after=1)
    assert result.cancelled and result.chunks == len(chunks) == 1
    assert_audio(chunks, engine.sample_rate_hz(None))
    assert engine._model.conds is None


def test_clone_then_save_and_load_through_the_voice_store(engine, voices, tmp_path):
    conds = voices["jfk"]
    assert isinstance(conds, Conditionals) and engine._model.conds is None
    assert conds.t3.speaker_emb.shape == (1, 256) and torch.isfinite(conds.t3.speaker_emb).all()
    prompt = conds.t3.cond_prompt_speech_tokens
    assert prompt.shape[0] == 1 and 0 < prompt.shape[1] <= T3Config.speech_cond_prompt_len
    assert set(conds.gen) == {"prompt_token", "prompt_token_len", "prompt_feat", "prompt_feat_len", "embedding"}
    assert conds.gen["prompt_token"].shape[1] > 0 and conds.gen["prompt_feat"].shape[2] == 80  # mel bins
    assert not torch.equal(conds.t3.speaker_emb, voices["wizard"].t3.speaker_emb)

    audio, rate = reference(VOICE_REFERENCES["jfk"])
    store = VoiceStore(tmp_path / "voices")
    info = store.create("jfk", engine.name, audio.size / rate, audio, rate,
                        lambda path: engine.save_conditionals(conds, path))
    loaded = engine.load_conditionals(store.conditionals_path(info.id))
    assert isinstance(loaded, Conditionals)
    assert_same_conds(loaded, conds)

    catalog = VoiceCatalog(engine, store, default=None, aliases=[], cache_size=4)
    resolved = asyncio.run(catalog.resolve("jfk"))
    assert resolved.cloned and resolved.id == info.id
    assert_same_conds(resolved.conditionals, conds)
    result, chunks = speak(engine, "A cloned voice, loaded from the store.", info.id, resolved.conditionals)
    assert_audio(chunks, engine.sample_rate_hz(None)) and result.chunks == len(chunks)


def test_interleaved_requests_each_use_their_own_conditionals(engine, voices, checkpoint, monkeypatch):
    model = engine._model
    builtin = Conditionals.load(checkpoint / "conds.pt")
    expected = {"jfk": voices["jfk"], "wizard": voices["wizard"], "builtin": builtin}
    before = {name: copy.deepcopy(tensors(c)) for name, c in voices.items()}
    # What the model really used, in order: each request's start (its text), the T3 conditioning
    # (speaker embedding, prompt tokens) and every S3Gen call's reference dict (x-vector, prompt mels).
    # The engine runs one request at a time under its lock, so everything between two starts belongs to
    # the first.
    log: list[tuple[str, object]] = []
    generate_stream, prepare_conditioning, s3gen_inference = (
        model.generate_stream, model.t3.prepare_conditioning, model.s3gen.inference)

    def spy_generate_stream(text, **kwargs):
        log.append(("start", text))
        return generate_stream(text, **kwargs)

    def spy_prepare_conditioning(t3_cond):
        log.append(("t3", t3_cond))
        return prepare_conditioning(t3_cond)

    def spy_s3gen_inference(*args, **kwargs):
        log.append(("gen", kwargs["ref_dict"]))
        return s3gen_inference(*args, **kwargs)

    monkeypatch.setattr(model, "generate_stream", spy_generate_stream)
    monkeypatch.setattr(model.t3, "prepare_conditioning", spy_prepare_conditioning)
    monkeypatch.setattr(model.s3gen, "inference", spy_s3gen_inference)

    # Alternating voices, one after the other: each request must find only its own voice on the model.
    monkeypatch.setitem(MAX_NEW_TOKENS, "now", CHUNK_TOKENS)  # one chunk each is enough here
    plan = [("jfk", 0), ("wizard", 0), ("builtin", 0), ("jfk", 1), ("wizard", 1)]
    heard: dict[str, list] = {}
    for name, i in plan:
        text = f"Voice {name} request {i}."
        if name == "builtin":
            result, chunks = speak(engine, text, BUILTIN_VOICE)
        else:
            result, chunks = speak(engine, text, f"cloned-{name}", voices[name])
        assert_audio(chunks, engine.sample_rate_hz(None))
        assert result.chunks == len(chunks)
        heard[text] = chunks

    requests: list[tuple[str, list]] = []
    for kind, value in log:
        if kind == "start":
            requests.append((value, []))
        else:
            requests[-1][1].append((kind, value))
    assert [text for text, _ in requests] == list(heard)
    for text, calls in requests:
        conds = expected[text.split()[1]]
        t3_calls = [v for k, v in calls if k == "t3"]
        gen_calls = [v for k, v in calls if k == "gen"]
        assert len(t3_calls) == 1 and gen_calls, (text, [k for k, _ in calls])
        assert torch.equal(t3_calls[0].speaker_emb, conds.t3.speaker_emb), text
        assert torch.equal(t3_calls[0].cond_prompt_speech_tokens, conds.t3.cond_prompt_speech_tokens), text
        assert all(torch.equal(g["embedding"], conds.gen["embedding"]) for g in gen_calls), text
        assert all(torch.equal(g["prompt_feat"], conds.gen["prompt_feat"]) for g in gen_calls), text
        if text.split()[1] != "builtin":  # the model got a private copy, never the stored objects
            assert t3_calls[0] is not conds.t3 and all(g is not conds.gen for g in gen_calls), text
    assert model.conds is None
    # The stored voices are exactly as cloned: nothing the model did to its private copy reached them
    # (T3.prepare_conditioning caches cond_prompt_speech_emb on the T3Cond it is given).
    for name, conds in voices.items():
        assert conds.t3.cond_prompt_speech_emb is None, name
        for key, value in tensors(conds).items():
            old = before[name][key]
            assert (torch.equal(value, old) if torch.is_tensor(value) else value == old), (name, key)


# -- the real service in a subprocess -------------------------------------------------------------

async def _first_audio_then_cancel(url: str) -> Received:
    async with websockets.connect(url, max_size=None) as ws:
        got = Received()
        await recv_until(ws, got, "ready", timeout_s=60)
        await ws.send(json.dumps({"type": "text", "text": "Hello there, this is a streaming test."}))
        await ws.send(json.dumps({"type": "flush"}))
        deadline = time.monotonic() + 300
        while not got.audio:  # the first audio chunk
            message = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(message, bytes):
                got.audio += message
                got.events.append(("audio", len(message)))
            else:
                got.events.append(json.loads(message))
                assert got.events[-1]["type"] != "error", got.events[-1]
        await ws.send(json.dumps({"type": "cancel"}))  # barge-in: the piece stops at its next chunk
        await recv_until(ws, got, "cancelled", timeout_s=120)
        await ws.send(json.dumps({"type": "end"}))
        return await recv_until(ws, got, None, timeout_s=60)


def test_service_subprocess_clones_and_streams(checkpoint, tmp_path):
    bare = tmp_path / "checkpoint-without-conds"  # no conds.pt: no built-in voice, no warm-up
    bare.mkdir()
    for name in CHECKPOINT_FILES:
        (bare / name).symlink_to(checkpoint / name)
    store = tmp_path / "voices"
    env = {
        "TTS_ENGINE__NAME": "chatterbox",
        "TTS_ENGINE__DEVICE": "cpu",
        "TTS_CHATTERBOX__CHECKPOINT_DIR": str(bare),
        "TTS_CHATTERBOX__CHUNK_TOKENS": str(CHUNK_TOKENS),
        "TTS_CHATTERBOX__CONTEXT_WINDOW": str(CONTEXT_TOKENS),
        "TTS_VOICES__STORE_DIR": str(store),
    }
    service = ServiceProcess("services.tts", env, tmp_path / "tts.log")
    try:
        started = time.perf_counter()
        service.start(timeout_s=600)
        print(f"\nservice ready in {time.perf_counter() - started:.1f} s")
        listed = httpx.get(service.http + "/v1/voices", timeout=30).json()
        assert [v for v in listed if not v["cloned"]] == []  # no conds.pt: no built-in voice
        upload = {"file": ("wizard.wav", VOICE_REFERENCES["wizard"].read_bytes(), "audio/wav")}  # 5 s
        r = httpx.post(service.http + "/v1/voices", files=upload, data={"name": "wizard"}, timeout=300)
        assert r.status_code == 201, (r.text, service.log()[-4000:])
        voice = r.json()
        assert voice["engine"] == "chatterbox" and voice["duration"] == pytest.approx(5.0, abs=0.1)
        assert (store / voice["id"] / "conditionals.bin").is_file()
        stored = Conditionals.load(store / voice["id"] / "conditionals.bin")  # the library's own format
        assert stored.t3.speaker_emb.shape == (1, 256)

        got = asyncio.run(_first_audio_then_cancel(f"{service.ws}/v1/stream/tts?voice={voice['id']}"))
        ready = got.of("ready")[0]
        assert ready["sample_rate"] == S3GEN_SR and ready["voice"] == voice["id"], ready
        assert ready["encoding"] == "pcm_s16le"
        assert got.of("segment") and got.of("cancelled"), got.types
        assert not got.of("error"), got.of("error")
        pcm = np.frombuffer(bytes(got.audio), dtype="<i2")
        assert pcm.size > 0 and np.abs(pcm).max() > 0
    except BaseException:
        print(service.log()[-6000:])
        raise
    finally:
        service.stop()
