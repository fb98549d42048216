"""Text-to-speech service: streaming speech from streaming text (see services/tts/app.py)."""
