"""examples/livekit_agent.py: LiveKit Agents' AgentSession with the Deepgram plugins pointed at the real ASR and TTS
services and a local server speaking the OpenAI streaming protocol as the LLM, run on a WAV file without a LiveKit
server (``file`` mode); and the session built with the OpenAI plugins instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT, read_wav
from fake_openai import FakeOpenAI
from tts_support import Transcriber, mostly_heard


def test_livekit_agent_answers_a_spoken_question_without_a_livekit_server(asr_service, examples_tts, tmp_path):
    reply = "The wizard lives at the top of the tall tower."
    with FakeOpenAI(lambda messages: reply, 0.01) as llm:
        env = {**os.environ, "LLM_BASE_URL": llm.base_url, "LLM_MODEL": "fake-model", "ASR_URL": asr_service.http,
               "TTS_URL": examples_tts.http}
        done = subprocess.run([sys.executable, "examples/livekit_agent.py", "file", "--input",
                               str(DATA / "asr" / "wizard.wav"), "--output", str(tmp_path / "answer.wav")],
                              cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "heard: " in done.stdout and "wizard" in done.stdout.split("heard: ")[1].lower()
    assert llm.requests and "wizard" in llm.requests[0].body["messages"][-1]["content"].lower()
    samples, rate = read_wav(tmp_path / "answer.wav")
    assert rate == 24000
    assert mostly_heard(reply, Transcriber()(samples.astype("float32") / 32768.0, rate))


@pytest.mark.asyncio
async def test_livekit_agent_builds_its_session_with_the_openai_plugins_too():  # (AgentSession wants a running loop)
    env = {"SPEECH_PLUGINS": "openai", "ASR_URL": "http://asr.internal:8001/", "TTS_URL": "http://tts.internal:8002",
           "LLM_BASE_URL": "http://llm.internal:8080/v1", "SPEECH_API_KEY": "speech-key-0123456789abcdef"}
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import livekit_agent
        from livekit.plugins import openai
        session = livekit_agent.build_session(env)
        assert isinstance(session.stt, openai.STT) and session.stt.capabilities.streaming  # the realtime socket
        assert str(session.stt._client.base_url) == "http://asr.internal:8001/v1/"
        assert isinstance(session.tts, openai.TTS) and str(session.tts._client.base_url) == "http://tts.internal:8002/v1/"
        assert session.tts._client.api_key == env["SPEECH_API_KEY"]
        assert str(session.llm._client.base_url) == "http://llm.internal:8080/v1/"
        assert session.vad is None  # the ASR service detects speech and turns
    finally:
        sys.path.remove(str(ROOT / "examples"))
        sys.modules.pop("livekit_agent", None)
