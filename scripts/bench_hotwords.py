"""Hotwords and prompt: the error rate on rare names (and the overall WER) with and without them.

Runs against a running ASR service (``--url``, loopback only unless ``--allow-remote``). The clips are real
speech whose sentences hold rare names (``samples/names/``: early printers and towns read in LJSpeech, a
LibriVox novel, an AMI meeting; ``names.tsv`` lists each clip's names). Every clip is transcribed through the
upload route (``POST /v1/transcribe``, beam search as files decode) and through the native stream
(``WS /v1/stream/asr?turn_detection=vad``, greedy finals as streams decode by default, audio sent as fast as the
service takes it), under four conditions, taken in turn for each clip so that a change in the machine's load
touches them alike:

* ``none``: no context;
* ``own_hotwords``: the clip's own names as ``hotwords``;
* ``glossary_hotwords``: every clip's names together as ``hotwords`` (one vocabulary for a whole deployment,
  so most of it is not said in any one clip);
* ``glossary_prompt``: the same vocabulary as a ``prompt`` sentence ("Glossary: ...").

Scores, for each route and condition: the **name error rate** (of the names in the references, the share not
found in the transcript, after Whisper's English normaliser on both sides), the names of the vocabulary the
transcript contains although its reference does not (false names), the corpus WER, and the wall time of the
clip's requests as a ratio to ``none`` (absolute times on a shared machine are not comparable across runs).
Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from bench_asr import corpus_wer, normalize
from benchlib import RATE, is_loopback_url, read_wav, wav_bytes, ws_url

CONDITIONS = ("none", "own_hotwords", "glossary_hotwords", "glossary_prompt")


def load_clips(data: Path) -> list[dict]:
    """Each clip of ``names.tsv``: its audio, reference and names."""
    clips = []
    for line in (data / "names.tsv").read_text().splitlines()[1:]:
        clip, names = line.split("\t")[:2]
        # Whisper's normaliser drops bracketed text, which LJSpeech uses for asides: the brackets go first.
        reference = (data / f"{clip}.txt").read_text().strip().replace("(", "").replace(")", "")
        clips.append({"clip": clip, "audio": read_wav(data / f"{clip}.wav"), "reference": reference,
                      "names": [n.strip() for n in names.split(",") if n.strip()]})
    return clips


def glossary(clips: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for c in clips:
        seen.update(dict.fromkeys(c["names"]))
    return list(seen)


def context_of(condition: str, clip: dict, vocabulary: list[str]) -> dict:
    """The form fields / query parameters of a condition."""
    if condition == "own_hotwords":
        return {"hotwords": ", ".join(clip["names"])}
    if condition == "glossary_hotwords":
        return {"hotwords": ", ".join(vocabulary)}
    if condition == "glossary_prompt":
        return {"prompt": "Glossary: " + ", ".join(vocabulary) + "."}
    return {}


def name_words(name: str) -> list[str]:
    return normalize(name).split()


def score_names(references: list[str], hypotheses: list[str], names: list[list[str]], vocabulary: list[str]) -> dict:
    """Names missed (of those said), and vocabulary words written more often than they were said."""
    words = {w for name in vocabulary for w in name_words(name)}
    said = missed = false = 0
    for ref, hyp, own in zip(references, hypotheses, names):
        heard, in_ref = Counter(normalize(hyp).split()), Counter(normalize(ref).split())
        false += sum(max(0, heard[w] - in_ref[w]) for w in words)
        for word in (w for name in own for w in name_words(name)):
            said += 1
            if heard[word] <= 0:
                missed += 1
            heard[word] -= 1
    return {"names_said": said, "names_missed": missed, "name_error_rate": missed / said if said else None,
            "false_names": false}


async def transcribe_file(client: httpx.AsyncClient, url: str, audio: np.ndarray, fields: dict) -> str:
    r = await client.post(f"{url}/v1/transcribe", files={"file": ("clip.wav", wav_bytes(audio), "audio/wav")},
                          data=fields, timeout=300)
    r.raise_for_status()
    return r.json()["text"]


async def transcribe_stream(url: str, audio: np.ndarray, fields: dict, headers: dict) -> str:
    import websockets
    from urllib.parse import urlencode

    pcm = (np.clip(np.concatenate([audio, np.zeros(RATE, np.float32)]), -1, 1) * 32767).astype("<i2").tobytes()
    finals = []
    query = urlencode({"turn_detection": "vad", "partials": "false", **fields})
    async with websockets.connect(f"{ws_url(url)}?{query}", max_size=None, additional_headers=headers) as ws:
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i:i + 3200])
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "final":
                finals.append(event["text"])
            elif event["type"] == "error":
                raise RuntimeError(event)
    return " ".join(finals)


async def run(args) -> dict:
    clips = load_clips(args.data)
    vocabulary = glossary(clips)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    routes = {"file": {c: [] for c in CONDITIONS}, "stream": {c: [] for c in CONDITIONS}}
    seconds = {route: Counter() for route in routes}
    async with httpx.AsyncClient(headers=headers) as client:
        await transcribe_file(client, args.url, clips[0]["audio"], {})  # warm-up, not counted
        await transcribe_stream(args.url, clips[0]["audio"], {}, headers)
        for _ in range(args.repeat):
            for clip in clips:
                for condition in CONDITIONS:
                    fields = context_of(condition, clip, vocabulary)
                    for route in routes:
                        started = time.perf_counter()
                        if route == "file":
                            text = await transcribe_file(client, args.url, clip["audio"], fields)
                        else:
                            text = await transcribe_stream(args.url, clip["audio"], fields, headers)
                        seconds[route][condition] += time.perf_counter() - started
                        routes[route][condition].append({"clip": clip["clip"], "text": text})
    out: dict = {"clips": [{"clip": c["clip"], "names": c["names"], "reference": c["reference"],
                            "seconds": round(c["audio"].size / RATE, 2)} for c in clips],
                 "vocabulary": vocabulary, "repeat": args.repeat, "routes": {}}
    refs = [c["reference"] for c in clips] * args.repeat
    names = [c["names"] for c in clips] * args.repeat
    for route, by_condition in routes.items():
        out["routes"][route] = {}
        for condition, rows in by_condition.items():
            hyps = [r["text"] for r in rows]
            out["routes"][route][condition] = {
                **score_names(refs, hyps, names, vocabulary), "wer": corpus_wer(refs, hyps)["wer"],
                "time_ratio": round(seconds[route][condition] / seconds[route]["none"], 3),
                "texts": {r["clip"]: r["text"] for r in rows}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8001", help="service base URL")
    p.add_argument("--data", default=Path(__file__).resolve().parents[1] / "samples" / "names", type=Path)
    p.add_argument("--out", default="bench-results/hotwords.json", type=Path)
    p.add_argument("--repeat", type=int, default=1, help="passes over the clips (timings average over them)")
    p.add_argument("--api-key", default=os.environ.get("ASR_API_KEY"))
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = p.parse_args(argv)
    if not args.allow_remote and not is_loopback_url(args.url):
        p.error(f"--url {args.url} is not loopback (use --allow-remote)")
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"{'route':7s} {'condition':18s} {'names missed':>13s} {'name ER':>8s} {'false':>6s} {'WER':>7s} "
          f"{'time':>6s}")
    for route, by_condition in result["routes"].items():
        for condition, r in by_condition.items():
            print(f"{route:7s} {condition:18s} {r['names_missed']:>6d} / {r['names_said']:<4d} "
                  f"{r['name_error_rate']:>8.1%} {r['false_names']:>6d} {r['wer']:>7.1%} {r['time_ratio']:>5.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
