// AudioWorklet processor of website_client.html: microphone samples -> 20 ms frames of 16 kHz pcm_s16le.
//
// Runs on the audio rendering thread. If the AudioContext already runs at 16 kHz (Chrome) the samples are
// only converted; otherwise (Firefox, whose microphone context must keep the device rate) they are low-passed
// (a moving average over the decimation ratio) and linearly resampled to 16 kHz here. Each full frame of
// 320 samples is posted to the page as a transferable ArrayBuffer.
const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms

class MicProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // fractional read position into the pending input
    this.pending = new Float32Array(0);
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.taps = Math.max(1, Math.round(this.ratio));
    this.history = new Float32Array(this.taps);
    this.historyIndex = 0;
    this.historySum = 0;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = v < 0 ? v * 32768 : v * 32767;
    if (this.filled === FRAME_SAMPLES) {
      const out = this.frame.buffer;
      this.port.postMessage(out, [out]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }

  lowpass(x) {
    if (this.taps === 1) return x;
    this.historySum += x - this.history[this.historyIndex];
    this.history[this.historyIndex] = x;
    this.historyIndex = (this.historyIndex + 1) % this.taps;
    return this.historySum / this.taps;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    if (this.ratio === 1) {
      for (let i = 0; i < channel.length; i++) this.emit(channel[i]);
      return true;
    }
    const joined = new Float32Array(this.pending.length + channel.length);
    joined.set(this.pending);
    for (let i = 0; i < channel.length; i++) joined[this.pending.length + i] = this.lowpass(channel[i]);
    let pos = this.position;
    while (pos + 1 < joined.length) {
      const i = Math.floor(pos);
      const frac = pos - i;
      this.emit(joined[i] * (1 - frac) + joined[i + 1] * frac);
      pos += this.ratio;
    }
    const keep = Math.floor(pos);
    this.pending = joined.slice(keep);
    this.position = pos - keep;
    return true;
  }
}

registerProcessor("mic-processor", MicProcessor);
