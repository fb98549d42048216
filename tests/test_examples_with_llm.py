"""examples/with_llm.py and the shared agent (examples/agent.py): real ASR and TTS services, and a local server
speaking the OpenAI streaming chat protocol with canned replies. A turn produces audio; speech during the
reply barges in: the TTS session answers `cancelled` and the LLM stream is dropped by the client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from conftest import DATA, ROOT, paced, read_wav
from fake_openai import FakeOpenAI

sys.path.insert(0, str(ROOT / "examples"))
from agent import AgentSettings, ChatReplier, EchoReplier, History, LlmConfig, VoiceAgent, make_replier  # noqa: E402
from audio_io import WavOut  # noqa: E402

LONG_REPLY = ("Well, that is a big question, and I will answer it slowly and carefully, one word at a time, "
              "because there is a great deal to say about apostles, the middle classes and their gospels, "
              "and I could go on talking about it for a very long while indeed if nobody stopped me.")
SHORT_REPLY = "Sorry, go ahead."


def test_history_is_bounded_in_turns_and_characters():
    history = History("system", max_turns=2, max_chars=200)
    for i in range(5):
        history.add("user", f"question {i}")
        history.add("assistant", f"answer {i}")
    assert [m["content"] for m in history.messages()] == ["system", "question 3", "answer 3", "question 4",
                                                          "answer 4"]
    history.add("user", "x" * 150)
    assert sum(len(m["content"]) for m in history.messages()) <= 200
    assert history.messages()[-1]["content"] == "x" * 150 and history.messages()[0]["role"] == "system"


def test_without_an_llm_it_says_so_and_echoes():
    lines: list[str] = []
    assert isinstance(make_replier(LlmConfig.from_env({}), log=lines.append), EchoReplier)
    assert "No LLM configured" in lines[0] and "echo" in lines[0]
    assert isinstance(make_replier(LlmConfig.from_env({"LLM_BASE_URL": "http://127.0.0.1:9/v1"}),
                                   log=lines.append), ChatReplier)
    assert LlmConfig.from_env({"LLM_API_KEY": "k"}).base_url == "https://api.openai.com/v1"


async def _converse(asr_url: str, tts_url: str, llm: FakeOpenAI, out: WavOut) -> VoiceAgent:
    quilter, rate = read_wav(DATA / "asr" / "quilter.wav")
    wizard, _ = read_wav(DATA / "asr" / "wizard.wav")
    frame = int(rate * 0.02) * 2
    settings = AgentSettings(asr_url=asr_url, tts_url=tts_url, in_sample_rate_hz=rate)
    agent = VoiceAgent(settings, ChatReplier(LlmConfig(llm.base_url, "fake-model")), out, log=lambda _: None)

    async def frames():
        audio = quilter.tobytes() + bytes(rate * 2)  # the question, then 1 s of silence: its turn ends
        for i in range(0, len(audio), frame):
            yield audio[i:i + frame]
        def silence_until_the_agent_talks():
            deadline = time.monotonic() + 30
            while agent.counters.audio_bytes == 0 and time.monotonic() < deadline:
                yield bytes(frame)
        async for chunk in paced(silence_until_the_agent_talks(), 0.02):  # a microphone: 20 ms every 20 ms
            yield chunk
        audio = wizard.tobytes() + bytes(rate * 2)  # the caller talks over the agent, at real time
        async for i in paced(range(0, len(audio), frame), 0.02):
            yield audio[i:i + frame]

    await asyncio.wait_for(agent.run(frames()), 90)
    return agent


def test_agent_turn_speaks_and_barge_in_cancels_tts_and_llm(asr_service, examples_tts, tmp_path):
    replies = iter([LONG_REPLY, SHORT_REPLY])
    with FakeOpenAI(lambda messages: next(replies, SHORT_REPLY), token_delay_s=0.08) as llm:
        out = WavOut(tmp_path / "agent.wav")
        agent = asyncio.run(_converse(f"{asr_service.ws}/v1/stream/asr", f"{examples_tts.ws}/v1/stream/tts",
                                      llm, out))
        first, second = llm.requests[0], llm.requests[1]
        assert first.ended.wait(10)
    # turn 1: the question reached the LLM, and its reply was spoken until the caller interrupted
    assert "quilter" in first.body["messages"][-1]["content"].lower()
    assert first.body["stream"] is True and first.body["model"] == "fake-model"
    assert agent.turns[0].first_audio_at is not None and agent.turns[0].interrupted
    # barge-in: the TTS session confirmed the cancel, and the LLM stream was dropped mid-reply
    assert agent.counters.barge_ins >= 1 and agent.counters.tts_cancelled >= 1
    assert first.disconnected and not first.finished
    assert 0 < first.tokens_sent < len(LONG_REPLY.split())
    # turn 2: the interruption became the next question, with the cut-off reply in the history
    contents = [m["content"] for m in second.body["messages"]]
    assert "wizard" in contents[-1].lower()
    assert any(c.endswith("...") and c.startswith("Well, that is") for c in contents)
    assert second.finished and not agent.turns[1].interrupted
    assert agent.turns[1].reply_text == SHORT_REPLY and agent.turns[1].first_audio_at is not None
    assert (tmp_path / "agent.wav").stat().st_size > 44 + 16000  # > 0.5 s of speech at 16 kHz
    assert not agent.counters.errors


def test_with_llm_program_reads_the_llm_from_the_environment(asr_service, examples_tts, tmp_path):
    with FakeOpenAI(lambda messages: "You asked about " + messages[-1]["content"][:40], 0.01) as llm:
        env = {**os.environ, "LLM_BASE_URL": llm.base_url, "LLM_MODEL": "fake-model", "LLM_API_KEY": "secret"}
        done = subprocess.run(
            [sys.executable, "examples/with_llm.py", "--input", str(DATA / "asr" / "wizard.wav"), "--output",
             str(tmp_path / "answer.wav"), "--speed", "0", "--asr-url", f"{asr_service.ws}/v1/stream/asr",
             "--tts-url", f"{examples_tts.ws}/v1/stream/tts"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"LLM: fake-model at {llm.base_url}" in done.stdout
    assert "turn 1: end of speech -> final" in done.stdout and "first audio" in done.stdout
    assert len(llm.requests) == 1 and llm.requests[0].finished
    assert "wizard" in llm.requests[0].body["messages"][-1]["content"].lower()
    samples, rate = read_wav(tmp_path / "answer.wav")
    assert len(samples) / rate > 1.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_agent_reopens_tts_after_the_service_closed_it_for_idleness(asr_service, tmp_path):
    """A quiet call outlives the TTS idle timeout: the next reply must still be spoken."""
    from conftest import running

    env = {"TTS_VOICES__STORE_DIR": str(tmp_path / "v"), "TTS_SERVER__IDLE_TIMEOUT_S": "2"}
    with running("services.tts", env, tmp_path) as tts, FakeOpenAI(lambda m: SHORT_REPLY) as llm:
        quilter, rate = read_wav(DATA / "asr" / "quilter.wav")
        frame = int(rate * 0.02) * 2
        out = WavOut(tmp_path / "idle.wav")
        agent = VoiceAgent(AgentSettings(asr_url=f"{asr_service.ws}/v1/stream/asr",
                                         tts_url=f"{tts.ws}/v1/stream/tts", in_sample_rate_hz=rate),
                           ChatReplier(LlmConfig(llm.base_url, "fake-model")), out, log=lambda _: None)

        async def frames():
            audio = bytes(rate * 2 * 4) + quilter.tobytes() + bytes(rate * 2 * 2)  # 4 s quiet: TTS times out
            async for i in paced(range(0, len(audio), frame), 0.005):  # a microphone at 4x real time
                yield audio[i:i + frame]

        asyncio.run(asyncio.wait_for(agent.run(frames()), 90))
    assert len(agent.turns) == 1 and agent.counters.audio_bytes > 0
    assert agent.turns[0].first_audio_at is not None
