"""examples/pipecat_agent.py end to end: Pipecat's own Deepgram STT and our word-timestamp TTS service (or Pipecat's
Deepgram TTS) pointed at the real ASR and TTS services,
a question from tests/data in, the spoken answer out; with a local server speaking the OpenAI streaming protocol
as the LLM, and with none (echo)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import DATA, ROOT, read_wav
from fake_openai import FakeOpenAI
from tts_support import Transcriber, mostly_heard


def run_agent(asr_service, tts_service, out, env, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "examples/pipecat_agent.py", "--input", str(DATA / "asr" / "wizard.wav"), "--output",
         str(out), "--speed", "4", "--asr-url", asr_service.ws, "--tts-url", tts_service.ws, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)


def heard(path) -> str:
    samples, rate = read_wav(path)
    return Transcriber()(samples.astype("float32") / 32768.0, rate)


def test_pipecat_agent_answers_with_an_llm(asr_service, examples_tts, tmp_path):
    reply = "The wizard lives at the top of the tall tower."
    with FakeOpenAI(lambda messages: reply, 0.01) as llm:
        env = {**os.environ, "LLM_BASE_URL": llm.base_url, "LLM_MODEL": "fake-model"}
        done = run_agent(asr_service, examples_tts, tmp_path / "answer.wav", env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"LLM: fake-model at {llm.base_url}" in done.stdout and "first reply audio" in done.stdout
    assert llm.requests and "wizard" in llm.requests[0].body["messages"][-1]["content"].lower()
    assert mostly_heard(reply, heard(tmp_path / "answer.wav"))
    assert f"timed words: {reply}" in done.stdout  # every word of the reply came with its time


def test_pipecat_agent_echoes_without_an_llm(asr_service, examples_tts, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    done = run_agent(asr_service, examples_tts, tmp_path / "echo.wav", env, "--deepgram-tts")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "No LLM configured" in done.stdout and "heard: " in done.stdout
    assert "you said" in heard(tmp_path / "echo.wav").lower()
