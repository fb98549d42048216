"""The ASR service: live streaming transcription over WebSocket and file transcription over HTTP."""
