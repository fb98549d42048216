"""The work of one live transcription stream: audio in, utterances, partials and finals out.

:class:`AudioProcessor` owns all per-stream state - the byte decoder and resampler, the :class:`~.segmenter.Segmenter`
(sample buffer, VAD state and endpointer) and the open utterance with its LocalAgreement - and asks the shared models
for everything through the runtime's schedulers. It writes events to its session's outbox (it holds the outbox and
task set, never the session, so a finished session is freed by reference counting):

* ``speech_start`` when an utterance begins;
* at ``vad.speculate_ms`` of a pause (``smart_turn``; by default one VAD window: as soon as the VAD hears it; ``vad``
  mode: at ``end_pad_ms``) the partial in flight is cancelled and the utterance's final - its speech and
  ``end_pad_ms`` after it, the part of the pad not heard yet taken as the silence the VAD says it is - is decoded
  *speculatively* at ``NORMAL`` priority, ahead of the decision (``smart_turn`` mode, while Whisper has other
  streams' work: only once a turn check gives P(complete) >= ``turn.speculate_threshold`` or the pause reaches
  ``turn.speculate_after_ms``; the stream's own work running, e.g. its last partial, does not count: the final goes
  next); if the turn does end there it is promoted to ``URGENT``, if speech resumes it is cancelled;
* every ``turn.check_interval_ms`` of the pause (``smart_turn`` mode) Smart Turn scores it; where the score could pass
  the policy's bar, the speculative final (which the final needs anyway) has the last word: a sentence that runs on
  is not a turn, a stop Whisper doubts is none either, and one it is sure of lowers the bar. A check runs beside the
  stream (:class:`~.turnchecks.PauseChecks`): every check of a pause ends the utterance at the same sample, so a
  decision that comes back later ends it where it would have ended at once, and only a window that would resume
  speech or reach the length limit, a commit or the end of input wait for the pause's checks (``turn.hold_stream``:
  every window does, the old path). At real time a stream has one check out, the newest checkpoint reached meanwhile
  runs when it is back, and the silence timeout waits for neither; a stream sent ahead of real time runs every
  check, and its timeout's final says ``turn`` if a check still out does. So the same audio gives the same utterances
  at any sending speed (as long as the turn model keeps up: while other sessions' checks wait for it, intermediate
  checks are shed, never in the audio a resumed stream replays, which is cut as it was before the drop);
* while speaking, every ``partial_interval_ms`` of new audio a greedy partial decode with the confirmed words forced
  as its prefix (replaced in the scheduler if still waiting when the next is due); partials and finals alike carry
  the stream's :class:`~.context.DecodingContext` (hotwords, prompt), which a dialect's session update may replace;
* when an utterance ends, a :class:`FinalSlot` takes its place in the outbox at once, so utterance K+1's events never
  overtake K's final; with ``vad_state`` the final carries the VAD's state at its end, which a resumed session starts
  its detector from (the processor scores the few windows between the last kept state and the end to reach it).

The segmenter trims its buffer behind the open utterance, so memory is bounded by ``streaming.max_utterance_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from ..common.audio import SAMPLE_RATE_HZ, ByteDecoder, Encoding, StreamResampler
from ..common.errors import ErrorCode, ServiceError
from ..common.outbox import Outbox, OutboxFull
from ..common.scheduler import Priority, Superseded
from ..common.session import report
from ..common.tasks import TaskSet
from ..common.vad import VadStream, decode_state, encode_state
from .context import DecodingContext
from .endpointing import (Action, CheckTurn, Ended, Endpointer, EndReason, Resumed, Speculate, SpeechState,
                          Started, TurnMode)
from .engine import DecodeRequest, DecodeResult
from .protocol import Final, Partial, SpeechStart, StreamParams
from .segmenter import Segmenter
from .serving import AsrRuntime
from .streaming import LocalAgreement
from .turn import TurnDecision
from .turnchecks import PauseChecks, SendingPace


@dataclass(eq=False)
class FinalSlot:
    """A final being decoded; ``future`` resolves to the Final event (or raises)."""

    utterance: int
    future: asyncio.Future = field(repr=False)
    decided_at: float = 0.0  # perf_counter when the utterance's end was decided


@dataclass
class _Utterance:
    index: int
    start_sample: int
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    last_partial_sample: int = 0
    last_partial_text: str = ""
    # The partial decode in flight, weakly: its frame holds this utterance, and once it is cancelled its
    # exception's traceback keeps that frame; a strong reference back would be a cycle for the collector.
    partial: weakref.ref[asyncio.Task] | None = None
    pause_end: int | None = None  # where the utterance ends if the current pause ends it
    speculative_end: int | None = None
    speculative: asyncio.Task | None = None

    @property
    def frozen(self) -> bool:
        """True during a pause once the final is being decoded: no more partials for it."""
        return self.speculative is not None


log = logging.getLogger(__name__)


def _seconds(sample: int) -> float:
    return round(sample / SAMPLE_RATE_HZ, 3)


class AudioProcessor:
    def __init__(self, session_id: str, outbox: Outbox, tasks: TaskSet, runtime: AsrRuntime, params: StreamParams,
                 language: str | None) -> None:
        s = runtime.settings
        self.session_id = session_id
        self.outbox = outbox
        self.tasks = tasks
        self.runtime = runtime
        self.params = params
        self.language = language
        self.context = DecodingContext(params.hotwords, params.prompt)  # every decode's hotwords and prompt
        self.decoder = ByteDecoder(params.encoding)
        self.resampler = StreamResampler(params.sample_rate, SAMPLE_RATE_HZ)
        resumed = params.resume.vad_state
        self.segmenter = Segmenter(runtime.endpoint_options(params.turn_detection), runtime.detector_options(),
                                   vad_stream=decode_state(resumed)[1] if resumed is not None else None,
                                   keep_states=params.vad_state)
        self.utterances = 0
        self.utterance: _Utterance | None = None
        self.partial_interval = s.streaming.partial_interval_ms * SAMPLE_RATE_HZ // 1000
        self.min_partial = s.streaming.min_partial_audio_ms * SAMPLE_RATE_HZ // 1000
        self.replay_samples = int(params.resume.replay_s * SAMPLE_RATE_HZ)  # a resumed stream's replayed audio
        self.checks = PauseChecks(tasks, s.turn.hold_stream)  # the open pause's turn checks, beside the stream
        self.pace = SendingPace()

    @property
    def endpointer(self) -> Endpointer:
        return self.segmenter.endpointer

    @property
    def in_utterance(self) -> bool:
        return self.utterance is not None

    @property
    def idle(self) -> bool:
        """No utterance open and none starting: nothing accepted is waiting for a final."""
        return self.utterance is None and self.endpointer.detector.state is SpeechState.QUIET

    # -- what the session calls ----------------------------------------------------------------
    async def audio(self, frame: bytes) -> None:
        self.pace.frame()
        samples = self.decoder.decode(frame)
        self.runtime.metrics.audio_seconds.inc(samples.size / self.params.sample_rate)
        self.segmenter.append(self.resampler.process(samples))
        await self._run_vad()
        self._maybe_partial()
        self.segmenter.trim()

    async def commit(self) -> None:
        await self.checks.settle()
        await self._close_now(EndReason.COMMIT)

    async def finish(self) -> None:
        """No more audio: what is buffered is detected, and an open utterance ends with reason ``end``."""
        self.segmenter.append(self.resampler.process(np.zeros(0, dtype=np.float32), last=True))
        await self._run_vad()
        await self.checks.settle()
        await self._close_now(EndReason.END)

    def discard(self) -> None:
        """Drop the open utterance without a final (a client's ``clear``): its decodes stop costing model time."""
        u = self.utterance
        if u is None:
            return
        self.utterance = None
        self.checks.drop()
        for task in (u.partial() if u.partial is not None else None, u.speculative):
            if task is not None:
                task.cancel()
        u.partial = u.speculative = None
        if self.endpointer.in_utterance:
            self.endpointer.end(EndReason.COMMIT)

    def set_turn_mode(self, mode: TurnMode, vad_silence_ms: int | None = None) -> None:
        """Change how utterances end from now on (a dialect's session update); the open one ends by the new rule."""
        options = self.runtime.endpoint_options(mode)
        if vad_silence_ms is not None:
            options = dataclasses.replace(options, vad_silence_ms=vad_silence_ms)
        self.endpointer.options = options

    def set_format(self, encoding: Encoding, sample_rate: int) -> None:
        """Change the input format; only before any audio arrived (the decoder and resampler hold no state yet)."""
        self.params = dataclasses.replace(self.params, encoding=encoding, sample_rate=sample_rate)
        self.decoder = ByteDecoder(encoding)
        self.resampler = StreamResampler(sample_rate, SAMPLE_RATE_HZ)

    def stop(self) -> None:
        """The session ends: a speculative decode and turn checks stop costing model time."""
        if self.utterance is not None and self.utterance.speculative is not None:
            self.utterance.speculative.cancel()
        self.checks.drop()

    # -- detection -------------------------------------------------------------------------------
    async def _run_vad(self) -> None:
        async with aclosing(self.segmenter.detect_async(self.runtime.speech_probabilities, self._before)) as actions:
            async for action in actions:
                self._act(action)

    def _before(self, probability: float) -> Awaitable[None] | None:
        return self.checks.before(self.endpointer.settles(probability))

    async def _close_now(self, reason: EndReason) -> None:
        for action in self.segmenter.close(reason):
            self._act(action)

    def _act(self, action: Action) -> None:
        if log.isEnabledFor(logging.DEBUG) and not isinstance(action, Started):
            log.debug("endpoint", extra={"action": type(action).__name__,
                                         "position_s": _seconds(self.endpointer.position_sample),
                                         **self.runtime.whisper_load()})
        if isinstance(action, Started):
            self.utterance = _Utterance(self.utterances, action.start_sample, last_partial_sample=action.start_sample)
            self.utterances += 1
            self.outbox.put(SpeechStart(self.utterance.index, _seconds(action.start_sample)))
        elif isinstance(action, Speculate):
            u = self.utterance
            partial = u.partial() if u is not None and u.partial is not None else None
            if partial is not None:
                partial.cancel()  # the pause has begun: the final is what counts now (a running one finishes)
            if u is not None:
                u.pause_end = action.end_sample
                smart_turn = self.endpointer.options.mode is TurnMode.SMART_TURN
                if not smart_turn or self.runtime.whisper_free_for(self.session_id):
                    self._speculate(u)  # else (under load) a turn check, or the pause's length, says when
        elif isinstance(action, Resumed):
            u = self.utterance
            if u is not None:
                u.pause_end = None
                if u.speculative is not None:
                    u.speculative.cancel()
                    u.speculative, u.speculative_end = None, None
        elif isinstance(action, CheckTurn):
            u = self.utterance
            if u is None:
                return
            rt = self.runtime
            if (late := rt.settings.turn.speculate_after_ms) is not None and action.silence_ms >= late:
                self._speculate(u)  # a long pause: its final (at u.pause_end) is decoded whatever its checks said
            last_check_ms = self.endpointer.options.turn_checkpoints_ms[-1]
            live = action.end_sample >= self.replay_samples  # not audio a resumed stream replays
            if (live and rt.turn_backlogged(self.session_id)
                    and action.silence_ms + rt.settings.turn.check_interval_ms < last_check_ms):
                # under load an intermediate check is shed (a later one decides), never in a resumed stream's replay
                return
            audio = self.segmenter.slice(u.start_sample, self.endpointer.position_sample)
            # At real time, while this stream's last check is out (the model is slower than the pause) the newest
            # checkpoint waits for it. A stream sent ahead of real time, or replaying, runs every check
            one_at_a_time = live and not self.pace.ahead(self.endpointer.position_sample)
            self.checks.ask(self._decide_turn, u, action, audio, one_at_a_time=one_at_a_time)
        elif isinstance(action, Ended):
            checks = self.checks.take()
            if self.pace.ahead(self.endpointer.position_sample):  # the final says turn if a check still out does
                self._finish(action, checks)
            else:  # live: the timeout has decided, the checks still out are too late to matter
                for check in checks:
                    check.cancel()
                self._finish(action)

    async def _decide_turn(self, u: _Utterance, action: CheckTurn, audio: np.ndarray) -> bool:
        """One turn check of ``u``'s pause; ends the utterance if the turn is complete and it is still open.
        True if the turn is complete."""
        rt = self.runtime
        try:
            probability = await rt.turn_probability(audio, self.session_id)
        except ServiceError as err:  # the model is full or stalled: this check decides nothing, the timeout does
            log.warning("turn check failed", extra={"code": err.code.value, "detail": err.message})
            return False
        current = self.utterance is u
        if current and probability >= rt.settings.turn.speculate_threshold and u.pause_end == action.end_sample:
            self._speculate(u)  # a pause that may end the turn: its final is decoded now, ahead of the decision
        decision = rt.policy.decide(probability, action.silence_ms)
        result = None
        if rt.policy.wants_text(probability, action.silence_ms):
            result = await self._speculative_result(u, action.end_sample)  # the final is needed anyway
            if result is not None:
                decision = rt.policy.decide(probability, action.silence_ms, result.text, result.end_probability)
        rt.record_turn(decision, probability, action.silence_ms, result)
        complete = decision is TurnDecision.COMPLETE
        if complete and self.utterance is u and self.endpointer.in_utterance:
            self.checks.drop(keep=asyncio.current_task())  # the pause's other checks can only say the same
            self._finish(self.endpointer.end(EndReason.TURN, action.end_sample))
        return complete

    # -- finals ----------------------------------------------------------------------------------
    async def _speculative_result(self, u: _Utterance, end_sample: int) -> DecodeResult | None:
        """The final being decoded for this pause (None without one): its words decide the turn too."""
        if u.speculative is None or u.speculative_end != end_sample:
            return None
        try:
            return await asyncio.shield(u.speculative)
        except (ServiceError, asyncio.CancelledError):
            if asyncio.current_task().cancelling():
                raise
            return None

    def _speculate(self, u: _Utterance) -> None:
        """Decode the final of the pause that began at ``u.pause_end`` at NORMAL priority (promoted when the turn
        ends there); skipped while the Whisper queue is long (it would only compete with real finals)."""
        if u.speculative is not None or u.pause_end is None or not self.runtime.can_speculate():
            return
        u.speculative_end = u.pause_end
        u.speculative = self.tasks.spawn(
            self._decode_final(u, u.pause_end, Priority.NORMAL, self._speculation_key(u)), "speculative-final")

    def _speculation_key(self, u: _Utterance) -> tuple:
        return ("speculative-final", self.session_id, u.index)

    def _decode_final(self, u: _Utterance, end_sample: int, priority: Priority = Priority.URGENT,
                      replace_key: tuple | None = None):
        rt = self.runtime
        # The final is a fresh decode of the whole utterance, deliberately not forced onto the
        # partials' stable prefix: it is the never-revised transcript, and with the same beam it is
        # the same request an upload of this audio makes (see files.py).
        audio = self.segmenter.slice(u.start_sample, end_sample)
        unheard = end_sample - u.start_sample - audio.size
        if unheard > 0:  # a speculative final ahead of the end pad: the pause's rest is decoded as silence
            audio = np.concatenate([audio, np.zeros(unheard, dtype=np.float32)])
        request = DecodeRequest(
            audio=audio, beam_size=rt.settings.streaming.final_beam_size,
            word_timestamps=True, language=self.language, final=True,
            hotwords=self.context.hotwords or None, prompt=self.context.prompt or None,
        )
        return rt.decode_final(request, priority, replace_key, owner=self.session_id)

    def _finish(self, ended: Ended, checks: tuple[asyncio.Task, ...] = ()) -> None:
        u = self.utterance
        self.utterance = None
        if u is None:
            return
        decided_at = time.perf_counter()
        if u.speculative is not None and u.speculative_end == ended.end_sample:
            decoding = u.speculative
            self.runtime.promote_final(self._speculation_key(u))
            source = "decoded_ahead" if decoding.done() else "started_ahead"
        else:
            if u.speculative is not None:
                u.speculative.cancel()
            decoding = self.tasks.spawn(self._decode_final(u, ended.end_sample), "final")
            source = "decoded_after"
        self.runtime.metrics.final_decodes.labels(source=source).inc()
        vad_state = self.segmenter.state_at(ended.end_sample) if self.params.vad_state else None
        built = self.tasks.spawn(self._build_final(u, ended, decoding, vad_state, checks), "final-event")
        self.outbox.put(FinalSlot(u.index, built, decided_at), force=True)

    async def _build_final(self, u: _Utterance, ended: Ended, decoding: asyncio.Task,
                           vad_state: tuple[VadStream, np.ndarray] | None = None,
                           checks: tuple[asyncio.Task, ...] = ()) -> Final:
        result: DecodeResult = await decoding
        if checks and True in await asyncio.gather(*checks, return_exceptions=True):
            ended = dataclasses.replace(ended, reason=EndReason.TURN)  # a check of its pause, out at the timeout
        offset = ended.start_sample / SAMPLE_RATE_HZ
        state = None
        if vad_state is not None:
            stream, audio = vad_state
            if audio.size:
                await self.runtime.speech_probabilities(stream, audio)  # from the kept state on to the final's end
            state = encode_state(stream, self.runtime.vad_model.fingerprint)
        return Final(u.index, result.text.strip(), _seconds(ended.start_sample), _seconds(ended.end_sample),
                     ended.reason, [w.as_dict(offset) for w in result.words], vad_state=state)

    # -- partials --------------------------------------------------------------------------------
    def _maybe_partial(self) -> None:
        u = self.utterance
        if (u is None or not self.params.partials or u.frozen
                or self.endpointer.detector.state is not SpeechState.SPEAKING):
            return
        position = self.endpointer.position_sample
        if position - u.last_partial_sample < self.partial_interval or position - u.start_sample < self.min_partial:
            return
        u.last_partial_sample = position
        audio = self.segmenter.slice(u.start_sample, position)
        u.partial = weakref.ref(self.tasks.spawn(self._partial(u, audio, position), "partial"))

    async def _partial(self, u: _Utterance, audio: np.ndarray, position: int) -> None:
        rt = self.runtime
        request = DecodeRequest(audio=audio, beam_size=rt.settings.model.partial_beam_size,
                                prefix=u.agreement.stable, language=self.language,
                                hotwords=self.context.hotwords or None, prompt=self.context.prompt or None)
        try:
            result = await rt.decode_partial(request, self.session_id)
        except Superseded:
            return  # a newer partial replaced it
        except ServiceError as err:
            if err.code is ErrorCode.INTERNAL:  # the engine failed (or hung) on this session's audio: so would its final
                report(self.outbox, err)
            return  # the model is busy: partials are optional
        if self.utterance is not u or u.frozen or not u.agreement.update(result.text):
            return
        text = u.agreement.text.strip()
        if text and text != u.last_partial_text:
            u.last_partial_text = text
            try:
                self.outbox.put(Partial(u.index, text, u.agreement.stable.strip(), _seconds(position)))
                rt.metrics.partials.inc()
            except OutboxFull:
                pass
