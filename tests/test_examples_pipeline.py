"""examples/simple_pipeline.py end to end: a real speech file through the real ASR and TTS services, and the
echoed speech transcribed back by the project's own Whisper model."""

from __future__ import annotations

import subprocess
import sys

from conftest import DATA, ROOT, normalise, read_wav
from tts_support import Transcriber, mostly_heard

REFERENCE = "Mr. Quilter is the apostle of the middle classes and we are glad to welcome his gospel."


def test_echo_bot_says_back_what_it_heard(asr_service, examples_tts, tmp_path):
    out = tmp_path / "echo.wav"
    done = subprocess.run(
        [sys.executable, "examples/simple_pipeline.py", str(DATA / "asr" / "quilter.wav"), "-o", str(out),
         "--speed", "0", "--asr-url", f"{asr_service.ws}/v1/stream/asr",
         "--tts-url", f"{examples_tts.ws}/v1/stream/tts"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "heard (" in done.stdout and "wrote" in done.stdout
    samples, rate = read_wav(out)
    assert len(samples) / rate > 2.0, "the echo is too short to be the sentence"
    heard = Transcriber()(samples.astype("float32") / 32768.0, rate)
    assert mostly_heard(REFERENCE, heard), f"echo transcribed as {heard!r}"
    assert {"quilter", "apostle", "gospel"} & set(normalise(heard))
