"""examples/website_client.html in headless Chromium (Debian's package, driven by Playwright): the page, served by
examples/serve_web.py, streams Chromium's fake microphone (a real speech file) through its AudioWorklet to the real
ASR service and shows the final; a typed sentence is spoken by the real TTS service and scheduled for playback;
Stop barges in and the TTS answers `cancelled`."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest

from conftest import DATA, ROOT, free_port, normalise, read_wav, wait_until

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "examples/serve_web.py", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def serving() -> bool:
            assert proc.poll() is None, "serve_web.py exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/web/mic-worklet.js", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(serving, 20, "serve_web.py started")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_serves_only_the_client(page_server):
    assert httpx.get(page_server + "/", follow_redirects=True).text.startswith("<!doctype html>")
    assert httpx.get(page_server + "/serve_web.py").status_code == 404
    assert httpx.get(page_server + "/web/mic-worklet.js").headers["content-type"].startswith("text/javascript")


def test_browser_transcribes_the_microphone_and_speaks_typed_text(asr_service, examples_tts, page_server, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/install.sh installs the Debian package")
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it)")
    from playwright.sync_api import sync_playwright

    samples, rate = read_wav(DATA / "asr" / "quilter.wav")  # the fake microphone loops it: 3 s of silence after
    mic = tmp_path / "mic.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.concatenate([samples, np.zeros(rate * 3, np.int16)]).tobytes())
    flags = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={mic}", "--headless", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    query = urlencode({"asr": f"{asr_service.ws}/v1/stream/asr", "tts": f"{examples_tts.ws}/v1/stream/tts"})
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=flags)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{page_server}/?{query}")
            page.click("#start-mic")
            page.wait_for_selector("#finals .final", timeout=60_000)
            heard = page.inner_text("#finals")
            assert {"quilter", "apostle", "gospel"} <= set(normalise(heard)), heard
            assert page.inner_text("#lat-server").endswith("ms") and page.inner_text("#lat-final").endswith("ms")

            page.fill("#say-text", "Hello from the browser. This sentence should be spoken out loud, slowly.")
            page.click("#speak")
            page.wait_for_function("Number(document.getElementById('scheduled').textContent) > 0",
                                   timeout=30_000)
            assert page.evaluate("tts.ctx.state") == "running"
            start = page.evaluate("tts.ctx.currentTime")
            page.wait_for_function(f"tts.ctx.currentTime > {start} + 0.2", timeout=10_000)  # it is playing
            assert page.evaluate("tts.nextTime") > page.evaluate("tts.ctx.currentTime")  # more is scheduled
            assert page.inner_text("#lat-first-audio").endswith("ms")

            page.click("#stop")
            page.wait_for_function("document.getElementById('tts-status').textContent === 'cancelled'",
                                   timeout=15_000)
            assert page.evaluate("tts.sources.length") == 0
            assert page.inner_text("#lat-cancel").endswith("ms")
        finally:
            browser.close()
    assert not errors, errors
