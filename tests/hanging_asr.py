"""``python -m hanging_asr --host H --port N`` (with tests/ on PYTHONPATH): the real ASR service, run exactly
as ``python -m services.asr`` runs it, except that its Whisper calls hang while the file named by
``HANG_FLAG`` exists - as a wedged native library or device would. The watchdog test uses it."""

from __future__ import annotations

import os
import sys
import time

from services.asr import engine
from services.asr.__main__ import main

_decode_batch = engine.WhisperEngine.decode_batch


def decode_batch(self, requests):
    while os.path.exists(os.environ["HANG_FLAG"]):  # the model thread makes no progress
        time.sleep(0.05)  # a hung model thread: it only looks whether the test has let it go
    return _decode_batch(self, requests)


engine.WhisperEngine.decode_batch = decode_batch

if __name__ == "__main__":
    sys.exit(main())
