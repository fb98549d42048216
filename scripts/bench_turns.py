#!/usr/bin/env python3
"""Turn-taking benchmark of a RUNNING ASR service, through WS /v1/stream/asr (a measurement tool, not a test).

    scripts/start_asr.sh --port 8001 &
    .venv/bin/python scripts/bench_turns.py --url http://127.0.0.1:8001 --out bench-results/turns.json

Real speech, two kinds of utterance, each streamed in its own session at real time in 20 ms frames and followed
by the recording's own room tone (``--tail`` s; the session then sends ``end``):

* **complete**: a clip of ``--asr-data`` (``samples`` by default) up to the end of its last word - unless its reference text
  stops mid-sentence (LJSpeech splits sentences at clause boundaries: a reference that is punctuated but does not
  end with . ! ?, or ends with a comma), which makes it a pause;
* **paused**: the same clip cut after a word near its middle that no punctuation follows (word times from the
  project's Whisper engine, in-process, cached in ``--cache``), and the five cut-off LibriVox utterances of
  ``--turns-data`` (``LABELS.tsv``): the speaker has only paused.

The end of the last word is the last 20 ms frame within 30 dB of the utterance's loudest frame; time-to-final
(TTF) counts from sending it. Reported: for complete utterances, the share ended with reason ``turn`` (the rest
wait for the silence timeout) and TTF p50/p95; for paused ones, the share ended *prematurely* with ``turn``;
and turn finals inside complete clips (natural pauses the service took for an end of turn).

``--heldout`` adds other real speech as a check of a tuned policy: the 32 sentences of the LJSpeech
concatenation in ``eval/long`` (a sentence whose text ends without . ! ? is a pause: LJSpeech splits some
sentences mid-clause) and the 13 utterances of the two-person call in ``eval/turns`` (turn ends).
``--streams N`` runs N sessions at once (default 1). ``--baseline-url`` names a second service (e.g. one started
with ``ASR_TURN__WORDS=false``): each case is streamed there right before ``--url``, and the JSON holds both runs'
figures and the TTF ratios, so a policy change is measured in one run. Also reported: the share of complete
utterances ended by ``turn`` within 650 ms of the last word. Only loopback URLs unless ``--allow-remote``.

``--simulate FILE`` does not stream: it computes, in-process, what the service's turn policy sees for every
case - Smart Turn's P(complete) at every ``--check-ms`` of the pause after the last word (``p``, the room tone
included, as the service passes it), at each checkpoint the default service would ask it (``service_p``: its
endpointer's silence, counted from where the VAD ends the speech, every ``turn.check_interval_ms`` up to the
silence fallback: 7 checkpoints, of which the default curve asks the first 6), the final's text (decoded as the
service decodes its finals, ``streaming.final_beam_size``) and Whisper's probability for its last token
(``end_probability``, what ``turn.words`` reads) - and writes them to FILE, so a policy can be tuned offline (``services.asr.turn.TurnPolicy``) before it is measured
through the socket. ``--sweep-words FILE`` tries every ``turn.closing_min`` x ``turn.closing_sure`` x
``turn.sure_probability`` on the tuning set (the settings' curve) and prints the frontier, with the held-out set
scored, never swept. ``--sweep FILE`` reads such a file and tries every curve of thresholds at those checkpoints
on the tuning set (a grid of 13 levels each, text cue applied): for each number of premature ends, the most
complete utterances any curve ends by ``turn``, and what that curve does on the held-out set. The simulation is
optimistic: pauses inside an utterance are not in it (through the service an utterance ended at one leaves the
model a shorter one at the next); measure a chosen curve through the socket
(``turns_inside``, and the service's debug log's ``turn check`` lines for the text of each end).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import RATE, is_loopback_url, mirror_tile, read_wav, summarize, ws_url

FRAME = RATE // 50  # 20 ms
ENERGY_DB = 30.0
TERMINAL = re.compile(r"[.!?]['\")\]]*$")
FAST_TURN_MS = 650  # the target: a complete utterance ends with a turn final this soon after its last word


def frame_rms(x: np.ndarray) -> np.ndarray:
    frames = np.pad(x, (0, (-x.size) % FRAME)).reshape(-1, FRAME)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


def last_word_end(x: np.ndarray) -> int:
    """Sample index just past the last 20 ms frame within 30 dB of the loudest frame."""
    rms = frame_rms(x)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-ENERGY_DB / 20))
    return min(x.size, (int(loud[-1]) + 1) * FRAME)


def room_tone(x: np.ndarray, first_word_s: float | None = None) -> np.ndarray:
    """The recording's silence: after its last word, or before its first; if both are shorter than 150 ms,
    noise at the level of its quietest frames."""
    tail = x[last_word_end(x) + FRAME * 3:]
    head = x[: max(0, int(((first_word_s or 0.0) - 0.1) * RATE))]
    best = tail if tail.size >= head.size else head
    if best.size >= int(0.15 * RATE):
        return best
    level = float(np.percentile(frame_rms(x), 10))
    return (np.random.default_rng(0).standard_normal(RATE) * level).astype(np.float32)


@dataclass
class Case:
    name: str
    kind: str  # "complete" | "paused"
    speech: np.ndarray
    tone: np.ndarray
    speech_end: int  # sample just past the last word


def clip_kind(reference: Path) -> str:
    """``complete``, or ``paused`` when the reference stops mid-sentence (see the module docstring)."""
    text = reference.read_text().strip() if reference.exists() else ""
    punctuated = bool(re.search(r"[,.;:!?]", text))
    if re.search(r"[,;:\-]['\")]*$", text) or (punctuated and not TERMINAL.search(text)):
        return "paused"
    return "complete"


def word_times(path: Path, audio: np.ndarray, cache: dict) -> list[dict]:
    """Word times of a whole clip (at most 30 s) from the project's engine: one beam-5 decode."""
    if path.name not in cache:
        from services.asr.engine import DecodeRequest, WhisperEngine

        global _ENGINE
        if _ENGINE is None:
            _ENGINE = WhisperEngine(cpu_threads=2)
        result = _ENGINE.decode_batch([DecodeRequest(audio[: 30 * RATE], beam_size=5, word_timestamps=True)])[0]
        cache[path.name] = [w.as_dict() for w in result.words]
    return cache[path.name]


_ENGINE = None


def mid_cut(words: list[dict]) -> float | None:
    """End (s) of the word nearest the middle that is neither punctuated nor among the last two."""
    candidates = [(i, w) for i, w in enumerate(words[:-2]) if i >= 1 and not re.search(r"[,.;:!?]$", w["word"])]
    if not candidates:
        return None
    middle = (words[0]["start"] + words[-1]["end"]) / 2
    i, w = min(candidates, key=lambda c: abs(c[1]["end"] - middle))
    return (w["end"] + words[i + 1]["start"]) / 2 if words[i + 1]["start"] > w["end"] else w["end"]


def build_cases(args) -> list[Case]:
    cache_file = Path(args.cache) / "turn-words.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    cases = []
    for path in sorted(Path(args.asr_data).glob("*.wav")):
        x = read_wav(path)
        words = word_times(path, x, cache)
        tone = room_tone(x, words[0]["start"] if words else None)
        end = last_word_end(x)
        cases.append(Case(path.stem, clip_kind(path.with_suffix(".txt")), x[:end], tone, end))
        cut = mid_cut(words)
        if cut is not None:
            head = x[: int(cut * RATE)]
            cases.append(Case(path.stem + "@mid", "paused", head, tone, last_word_end(head)))
    turns = Path(args.turns_data)
    with open(turns / "LABELS.tsv", newline="") as f:
        rows = {Path(r["file"]).stem: r for r in csv.DictReader(f, delimiter="\t")}
    for name, row in rows.items():
        if row["label"] != "incomplete":
            continue
        speech = read_wav(turns / f"{name}.wav")[: int(float(row["last_word_end_s"]) * RATE)]
        tone = room_tone(read_wav(turns / f"{name.rsplit('_', 1)[0]}_complete.wav"))
        cases.append(Case(name, "paused", speech, tone, last_word_end(speech)))
    if args.heldout:
        cases += heldout_cases(Path(args.long_data), turns)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache))
    return cases


def heldout_cases(long_dir: Path, turns: Path) -> list[Case]:
    cases = []
    lj = read_wav(long_dir / "ljspeech_LJ001-0001_to_0032_concat.wav")
    tone = (np.random.default_rng(1).standard_normal(RATE) * float(np.percentile(frame_rms(lj), 5))).astype(np.float32)
    with open(long_dir / "ljspeech_LJ001-0001_to_0032_concat.segments.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            seg = lj[int(float(row["start_s"]) * RATE): int(float(row["end_s"]) * RATE)]
            kind = "complete" if TERMINAL.search(row["transcript"].strip()) else "paused"
            cases.append(Case("heldout:" + row["utt_id"], kind, seg[: last_word_end(seg)], tone, last_word_end(seg)))
    call = read_wav(turns / "pyannote_sample_call_30s.wav")
    tone = room_tone(call[: int(6.5 * RATE)])  # before the first word of the call
    for i, line in enumerate((turns / "pyannote_sample_call_30s.stm").read_text().splitlines()):
        parts = line.split(maxsplit=5)
        seg = call[int(float(parts[3]) * RATE): int(float(parts[4]) * RATE)]
        cases.append(Case(f"heldout:call{i:02d}", "complete", seg[: last_word_end(seg)], tone, last_word_end(seg)))
    return cases


async def run_case(url: str, case: Case, tail_s: float, query: str) -> dict:
    from websockets.asyncio.client import connect

    audio = np.concatenate([case.speech, mirror_tile(case.tone, int(tail_s * RATE))])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    finals: list[tuple[float, dict]] = []
    sent_end_at: list[float] = []
    async with connect(ws_url(url) + (f"?{query}" if query else ""), open_timeout=15, close_timeout=5) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"

        async def receive() -> None:
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "final":
                    finals.append((time.monotonic(), event))
                elif event["type"] == "closed":
                    return

        receiver = asyncio.create_task(receive())
        t0 = time.monotonic()
        for k, off in enumerate(range(0, len(pcm), FRAME * 2)):
            await ws.send(pcm[off:off + FRAME * 2])
            if not sent_end_at and off + FRAME * 2 >= case.speech_end * 2:
                sent_end_at.append(time.monotonic())
            delay = t0 + (k + 1) * FRAME / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(receiver, 30)
    end_s = case.speech_end / RATE
    closing = [(t, e) for t, e in finals if e["end"] >= end_s - 0.3]
    inner = [e for t, e in finals if e["end"] < end_s - 0.3 and e["reason"] == "turn"]
    out = {"name": case.name, "kind": case.kind, "speech_s": round(case.speech.size / RATE, 2), "inner_turns": len(inner),
           "reason": None, "ttf_ms": None}
    if closing:
        t, event = closing[0]
        out["reason"] = event["reason"]
        if event["reason"] != "end":
            out["ttf_ms"] = round((t - sent_end_at[0]) * 1000, 1)
    return out


async def run_all(args, cases: list[Case]) -> tuple[list[dict], list[dict]]:
    """Every case through ``--url`` (and, with ``--baseline-url``, through that service right before it)."""
    queue: asyncio.Queue = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)
    results, baseline = [], []

    async def worker() -> None:
        while not queue.empty():
            case = queue.get_nowait()
            if args.baseline_url:
                baseline.append(await run_case(args.baseline_url, case, args.tail, args.query))
            results.append(await run_case(args.url, case, args.tail, args.query))

    await asyncio.gather(*(worker() for _ in range(args.streams)))
    return results, baseline


def report(results: list[dict]) -> dict:
    def part(rows: list[dict]) -> dict:
        complete = [r for r in rows if r["kind"] == "complete"]
        paused = [r for r in rows if r["kind"] == "paused"]
        turn = [r for r in complete if r["reason"] == "turn"]
        fast = [r for r in turn if r["ttf_ms"] is not None and r["ttf_ms"] <= FAST_TURN_MS]
        return {
            "complete": {"n": len(complete), "ended_by_turn": len(turn) / len(complete) if complete else None,
                         f"turn_within_{FAST_TURN_MS}ms": len(fast) / len(complete) if complete else None,
                         "ttf_ms": summarize([r["ttf_ms"] for r in complete if r["ttf_ms"] is not None]),
                         "ttf_turn_ms": summarize([r["ttf_ms"] for r in turn]),
                         "reasons": {k: sum(r["reason"] == k for r in complete) for k in {r["reason"] for r in complete}},
                         "turns_inside": sum(r["inner_turns"] for r in complete)},
            "paused": {"n": len(paused),
                       "premature_turn": sum(r["reason"] == "turn" for r in paused) / len(paused) if paused else None,
                       "premature": [r["name"] for r in paused if r["reason"] == "turn"],
                       "reasons": {k: sum(r["reason"] == k for r in paused) for k in {r["reason"] for r in paused}},
                       "ttf_ms": summarize([r["ttf_ms"] for r in paused if r["ttf_ms"] is not None])},
        }
    tuned = [r for r in results if not r["name"].startswith("heldout:")]
    heldout = [r for r in results if r["name"].startswith("heldout:")]
    return {"tuning_set": part(tuned), **({"heldout": part(heldout)} if heldout else {})}


def ttf_ratios(before: dict, after: dict) -> dict:
    """After / before of the complete utterances' TTF p50 and p95 (all of them, and those ended by ``turn``)."""
    out = {}
    for part in before:
        for key in ("ttf_ms", "ttf_turn_ms"):
            b, a = before[part]["complete"][key], after[part]["complete"][key]
            for q in ("p50", "p95"):
                if b.get(q) and a.get(q):
                    out[f"{part}.complete.{key}.{q}"] = round(a[q] / b[q], 3)
    return out


def service_options():
    """The default service's endpointer options, asking at every checkpoint a curve could use (every
    ``turn.check_interval_ms`` up to the silence fallback), and its VAD detector options."""
    from dataclasses import replace

    from services.asr.endpointing import TurnMode
    from services.asr.serving import detector_options, endpoint_options, turn_policy
    from services.asr.settings import load

    s = load()
    every = s.turn.check_interval_ms
    options = replace(endpoint_options(s, turn_policy(s), TurnMode.SMART_TURN),
                      turn_checkpoints_ms=tuple(range(every, s.turn.max_silence_ms, every)))
    return options, detector_options(s)


def service_checks(audio: np.ndarray, vad, options) -> dict[int, tuple[int, int]]:
    """{silence_ms: (utterance start, position)} of the service's turn checks in the last pause of ``audio``
    (``options``: :func:`service_options`): where its endpointer asks Smart Turn (silence counted from the VAD's end
    of speech, not the last word's energy end), and the audio it passes (utterance start to that position)."""
    from services.asr.endpointing import CheckTurn, Started
    from services.asr.segmenter import Segmenter

    segmenter = Segmenter(*options)
    segmenter.append(audio)
    start, checks = 0, {}
    for action in segmenter.detect(vad.probabilities):
        if isinstance(action, Started):
            start, checks = action.start_sample, {}
        elif isinstance(action, CheckTurn):
            checks[action.silence_ms] = (start, segmenter.position_sample)
    return checks


def simulate(args, cases: list[Case]) -> dict:
    """P(complete) at each check of each case's pause, and the final's text, computed in-process."""
    from services.asr.engine import DecodeRequest, WhisperEngine
    from services.asr.turn import SmartTurnModel
    from services.common.vad import SileroVad

    from services.asr.settings import load

    model, engine, vad = SmartTurnModel(), WhisperEngine(cpu_threads=2), SileroVad()
    options = service_options()
    beam = load().streaming.final_beam_size
    checks = list(range(args.check_ms, args.max_check_ms + 1, args.check_ms))
    out = {}
    for case in cases:
        speech = case.speech[: case.speech_end]
        pause = mirror_tile(case.tone, int(max(checks[-1], 1500) * RATE / 1000))
        audios = [np.concatenate([speech, pause[: int(ms * RATE / 1000)]]) for ms in checks]
        probabilities = model.predict(audios)
        pad = np.concatenate([speech, pause[: int(0.096 * RATE)]])
        final = engine.decode_batch([DecodeRequest(pad, beam_size=beam, word_timestamps=True, final=True)])[0]
        text = final.text.strip()
        stream = np.concatenate([speech, pause])
        at = service_checks(stream, vad, options)
        service = model.predict([stream[a:b] for a, b in at.values()]) if at else []
        out[case.name] = {"kind": case.kind, "text": text, "end_probability": final.end_probability,
                          "p": {str(ms): round(p, 4) for ms, p in zip(checks, probabilities)},
                          "service_p": {str(ms): round(p, 4) for ms, p in zip(at, service)}}
        print(f"{case.name:40s} {case.kind:8s} {text[-40:]!r:44s} "
              + " ".join(f"{p:.2f}" for p in probabilities[:10]), file=sys.stderr)
    return {"checks_ms": checks, "cases": out}


def words_outcomes(cases: list[dict], policy) -> tuple[int, int]:
    """(complete ended by turn, paused ended prematurely) when ``policy`` decides every ``service_p`` check
    of the simulated ``cases`` with their final's text and closing probability."""
    from services.asr.turn import TurnDecision

    complete = premature = 0
    for c in cases:
        ends = any(policy.decide(p, float(ms), c["text"], c.get("end_probability")) is TurnDecision.COMPLETE
                   for ms, p in c["service_p"].items())
        complete += ends and c["kind"] == "complete"
        premature += ends and c["kind"] != "complete"
    return complete, premature


CLOSING_LEVELS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


def sweep_words(sim: dict) -> list[dict]:
    """Every ``closing_min`` x ``closing_sure`` x ``sure_probability`` of the words policy (the settings' curve)
    on the tuning set's simulated inputs: for each number of premature ends, the most complete utterances ended
    by ``turn``, the parameters that do it and what they do on the held-out set (never swept). Among parameters
    that do equally well the lowest ``closing_min`` wins, then the highest ``closing_sure`` and the lowest
    ``sure_probability``: the veto only as strong as the tuning set needs, and where Whisper is sure of the stop,
    Smart Turn is asked for as little as the tuning set allows."""
    from dataclasses import replace

    from services.asr.serving import turn_policy
    from services.asr.settings import load

    base = turn_policy(load())
    sets = {held: [c for name, c in sim["cases"].items() if name.startswith("heldout:") == held and c.get("service_p")]
            for held in (False, True)}
    best: dict[int, tuple[int, tuple]] = {}
    for closing_min in CLOSING_LEVELS:
        for closing_sure in (x for x in reversed(CLOSING_LEVELS) if x >= closing_min):
            for sure in SWEEP_LEVELS:
                params = (closing_min, closing_sure, sure)
                policy = replace(base, words=True, closing_min=closing_min, closing_sure=closing_sure,
                                 sure_probability=sure)
                n_complete, n_premature = words_outcomes(sets[False], policy)
                if n_complete > best.get(n_premature, (-1,))[0]:
                    best[n_premature] = (n_complete, params)
    rows, top = [], -1
    for prem in sorted(best):
        n, (closing_min, closing_sure, sure) = best[prem]
        if n <= top:
            continue
        top = n
        policy = replace(base, words=True, closing_min=closing_min, closing_sure=closing_sure, sure_probability=sure)
        row = {"premature": prem, "paused": sum(c["kind"] != "complete" for c in sets[False]), "complete_by_turn": n,
               "complete": sum(c["kind"] == "complete" for c in sets[False]),
               "params": {"closing_min": closing_min, "closing_sure": closing_sure, "sure_probability": sure}}
        if sets[True]:
            hc, hp = words_outcomes(sets[True], policy)
            row["heldout"] = {"premature": hp, "paused": sum(c["kind"] != "complete" for c in sets[True]),
                              "complete_by_turn": hc, "complete": sum(c["kind"] == "complete" for c in sets[True])}
        rows.append(row)
    return rows


SWEEP_LEVELS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0)  # 1.0: (almost) never


def _sweep_inputs(cases: list[dict], marks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """passes[case, mark, level] (the check at this mark would end the turn at this level, text cue applied),
    and which cases are complete."""
    from services.asr.turn import sounds_unfinished

    p = np.array([[c["service_p"].get(str(m), 0.0) for m in marks] for c in cases]).reshape(len(cases), len(marks))
    ok = np.array([not sounds_unfinished(c["text"]) for c in cases], dtype=bool)
    passes = (p[:, :, None] >= np.array(SWEEP_LEVELS)[None, None, :]) & ok[:, None, None]
    return passes, np.array([c["kind"] == "complete" for c in cases], dtype=bool)


def sweep(sim: dict) -> list[dict]:
    """Every curve of thresholds at the checkpoints of ``service_p`` (one of ``SWEEP_LEVELS`` at each), on the
    tuning set's simulated inputs: for each number of premature ends, the most complete utterances any curve ends
    by ``turn``, one curve that does it, and what that curve does on the held-out set (never swept)."""
    from itertools import product

    sets = {held: [c for name, c in sim["cases"].items() if name.startswith("heldout:") == held and c.get("service_p")]
            for held in (False, True)}
    cases = sets[False]
    if not cases:
        return []
    marks = sorted({int(ms) for c in cases for ms in c["service_p"]})
    passes, complete = _sweep_inputs(cases, marks)
    best: dict[int, tuple[int, tuple]] = {}
    half = len(marks) // 2  # the curves over the last marks are tabled once; the first marks are looped over
    tails = list(product(range(len(SWEEP_LEVELS)), repeat=len(marks) - half))
    tail_idx = np.array(tails, dtype=int).reshape(len(tails), len(marks) - half).T
    tail_ends = np.zeros((len(cases), len(tails)), dtype=bool)
    for k, m in enumerate(range(half, len(marks))):
        tail_ends |= passes[:, m, :][:, tail_idx[k]]
    for head in product(range(len(SWEEP_LEVELS)), repeat=half):
        ends = tail_ends.copy()
        for m, j in enumerate(head):
            ends |= passes[:, m, j][:, None]
        n_complete = ends[complete].sum(axis=0)
        n_premature = ends[~complete].sum(axis=0)
        for prem in np.unique(n_premature):
            cols = np.flatnonzero(n_premature == prem)
            col = cols[np.argmax(n_complete[cols])]
            if int(n_complete[col]) > best.get(int(prem), (-1,))[0]:
                best[int(prem)] = (int(n_complete[col]), head + tails[col])
    held_passes, held_complete = _sweep_inputs(sets[True], marks) if sets[True] else (None, None)
    rows, top = [], -1
    for prem in sorted(best):
        n, combo = best[prem]
        if n <= top:  # the frontier: more premature ends only where they buy more complete ones
            continue
        top = n
        row = {"premature": prem, "paused": int((~complete).sum()), "complete_by_turn": n,
               "complete": int(complete.sum()), "curve": {m: SWEEP_LEVELS[j] for m, j in zip(marks, combo)}}
        if held_passes is not None:
            ends = np.any(held_passes[:, np.arange(len(marks)), list(combo)], axis=1)
            row["heldout"] = {"premature": int(ends[~held_complete].sum()), "paused": int((~held_complete).sum()),
                              "complete_by_turn": int(ends[held_complete].sum()),
                              "complete": int(held_complete.sum())}
        rows.append(row)
    return rows


def frontier_line(row: dict, setting: str) -> str:
    """One row of a sweep's frontier: what the tuning set allows at that many premature ends, with ``setting``
    (the thresholds or curve that does it), and the held-out set's score of it."""
    held = row.get("heldout")
    return (f"premature {row['premature']:2d} of {row['paused']}: at most {row['complete_by_turn']:2d} of "
            f"{row['complete']} complete ended by turn, {setting}"
            + (f"; held out: {held['complete_by_turn']} of {held['complete']} complete, "
               f"{held['premature']} of {held['paused']} premature" if held else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8001")
    p.add_argument("--asr-data", default="samples")
    p.add_argument("--turns-data", default="tests/data/turns")
    p.add_argument("--long-data", default="eval/long", help="with --heldout (docs/benchmarks.md)")
    p.add_argument("--heldout", action="store_true", help="add the held-out speech (LJ concatenation, a call)")
    p.add_argument("--tail", type=float, default=2.5, help="seconds of room tone after each utterance")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--query", default="", help="extra query string for the sessions, e.g. partials=false")
    p.add_argument("--baseline-url", default="",
                   help="a second service (e.g. the old policy): each case runs there right before --url")
    p.add_argument("--only", default="", help="a regular expression: run only the cases whose name matches")
    p.add_argument("--cache", default="bench-results/cache")
    p.add_argument("--out", default="bench-results/turns.json", type=Path)
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--simulate", type=Path, help="compute the policy's inputs in-process into this file instead")
    p.add_argument("--check-ms", type=int, default=96)
    p.add_argument("--max-check-ms", type=int, default=1536)
    p.add_argument("--sweep", type=Path,
                   help="read a --simulate FILE and print the best any threshold curve can do on the tuning set")
    p.add_argument("--sweep-words", type=Path,
                   help="read a --simulate FILE and print the best closing thresholds of turn.words on the tuning set")
    args = p.parse_args(argv)
    if args.sweep_words:
        for row in sweep_words(json.loads(args.sweep_words.read_text())):
            print(frontier_line(row, f"with {row['params']}"))
        return 0
    if args.sweep:
        for row in sweep(json.loads(args.sweep.read_text())):
            print(frontier_line(row, f"e.g. {row['curve']}"))
        return 0
    for url in filter(None, (args.url, args.baseline_url)):
        if not is_loopback_url(url) and not args.allow_remote:
            p.error(f"{url} is not a loopback URL (use --allow-remote)")
    cases = [c for c in build_cases(args) if re.search(args.only, c.name)]
    print(f"{len(cases)} cases ({sum(c.kind == 'complete' for c in cases)} complete), "
          f"{sum(c.speech.size for c in cases) / RATE:.0f} s of speech", file=sys.stderr)
    if args.simulate:
        args.simulate.parent.mkdir(parents=True, exist_ok=True)
        args.simulate.write_text(json.dumps(simulate(args, cases), indent=1))
        return 0
    results, baseline = asyncio.run(run_all(args, cases))
    out = {"config": {"tail_s": args.tail, "streams": args.streams, "query": args.query},
           "summary": report(results), "cases": sorted(results, key=lambda r: r["name"])}
    if baseline:
        out["baseline"] = {"summary": report(baseline), "cases": sorted(baseline, key=lambda r: r["name"])}
        out["ratios"] = ttf_ratios(out["baseline"]["summary"], out["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
