"""Audio helpers: u-law against the stdlib reference, split frames, resampling, file decoding."""

from __future__ import annotations

import audioop
import io
import wave

import numpy as np
import pytest

from services.common.audio import (ByteDecoder, Encoding, MonoPcm16, StreamResampler, decode_file, mulaw_to_pcm16,
                                   parse_sample_rate, pcm16_to_mulaw, wav_header)
from services.common.errors import ErrorCode, ServiceError


def test_mulaw_matches_the_reference_codec_bit_for_bit():
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert pcm16_to_mulaw(every) == audioop.lin2ulaw(every.tobytes(), 2)
    codes = bytes(range(256))
    assert mulaw_to_pcm16(codes).tobytes() == audioop.ulaw2lin(codes, 2)


def test_frames_split_mid_sample_decode_like_one_frame():
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 5001, dtype=np.int16).tobytes()
    whole = ByteDecoder(Encoding.PCM_S16LE).decode(pcm)
    dec = ByteDecoder(Encoding.PCM_S16LE)
    cuts = [0, 1, 2, 7, 1000, 1001, 5003, len(pcm)]
    parts = np.concatenate([dec.decode(pcm[a:b]) for a, b in zip(cuts, cuts[1:])])
    assert np.array_equal(whole, parts) and dec.pending_bytes == 0


def test_stream_resampler_preserves_duration_and_tone():
    rate_in, rate_out = 8000, 16000
    t = np.arange(rate_in * 2) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rs = StreamResampler(rate_in, rate_out)
    out = np.concatenate([rs.process(tone[i:i + 333]) for i in range(0, tone.size, 333)] + [rs.process(tone[:0], last=True)])
    assert abs(out.size - 2 * rate_out) <= 2
    spectrum = np.abs(np.fft.rfft(out[2000:-2000]))
    assert abs(np.argmax(spectrum) * rate_out / (out.size - 4000) - 440) < 5


@pytest.mark.parametrize("rate", [7999, 48001, 0])
def test_sample_rate_bounds(rate):
    with pytest.raises(ServiceError) as err:
        parse_sample_rate(rate)
    assert err.value.code is ErrorCode.BAD_AUDIO


def test_decode_file_resamples_and_downmixes():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        left = (np.sin(np.arange(44100) / 10) * 10000).astype(np.int16)
        w.writeframes(np.stack([left, left], axis=1).tobytes())
    audio = decode_file(buf.getvalue(), 16000)
    assert abs(audio.size - 16000) <= 32 and 0.25 < np.abs(audio).max() < 0.35


def test_decode_file_errors():
    with pytest.raises(ServiceError) as empty:
        decode_file(b"")
    assert empty.value.code is ErrorCode.BAD_AUDIO
    with pytest.raises(ServiceError) as junk:
        decode_file(b"\x00\x01garbage" * 100)
    assert junk.value.code is ErrorCode.UNSUPPORTED_MEDIA


def test_wav_header_is_readable():
    samples = np.arange(100, dtype=np.int16)
    data = wav_header(22050, samples.size) + samples.tobytes()
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (22050, 1, 100)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_mono_pcm16_matches_the_reference_codec_in_any_split(width):
    """Any width and channel count -> mono 16-bit as audioop converts it (8-bit is unsigned, as in WAV), with frames
    split anywhere between chunks."""
    rng = np.random.default_rng(width)
    stereo = rng.integers(-20000, 20000, size=(500, 2)).astype("<i2").tobytes()
    wide = audioop.lin2lin(stereo, 2, width)
    if width == 1:
        wide = audioop.bias(wide, 1, 128)
    expected = np.frombuffer(audioop.tomono(stereo, 2, 0.5, 0.5), dtype="<i2").astype(int)
    converter = MonoPcm16(width, 2)
    got = b"".join(converter.convert(wide[i:i + 333]) for i in range(0, len(wide), 333))
    assert np.abs(np.frombuffer(got, dtype="<i2") - expected).max() <= (256 if width == 1 else 1)


@pytest.mark.parametrize("width, channels", [(3, 1), (2, 0), (2, 9)])
def test_mono_pcm16_refuses_what_it_does_not_take(width, channels):
    with pytest.raises(ServiceError) as err:
        MonoPcm16(width, channels)
    assert err.value.code is ErrorCode.BAD_AUDIO

