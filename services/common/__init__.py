"""Code shared by the ASR and TTS services: audio conversion, settings loading,
the error type, Prometheus metrics, structured logging, admission control and
the per-model scheduler. Nothing here knows about a particular model."""
