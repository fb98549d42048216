"""Settings: YAML defaults, environment overrides, clear validation errors, and the CLI's exit on bad config."""

import subprocess
import sys

import pytest

from services.asr.settings import AsrSettings, load
from services.common.settings import SettingsError, load_settings


def test_packaged_config_matches_the_documented_defaults():
    assert load() == AsrSettings()  # config.yaml and settings.py say the same thing


def test_environment_overrides_nested_keys(tmp_path):
    s = load_settings(AsrSettings, path=None, env_prefix="ASR",
                      environ={"ASR_SERVER__MAX_CONNECTIONS": "32", "ASR_TURN__CURVE": "[[100, 0.9], [300, 0.8]]",
                               "ASR_MODEL__NAME": "large-v3", "OTHER": "x"})
    assert s.server.max_connections == 32 and s.turn.curve == [(100, 0.9), (300, 0.8)] and s.model.name == "large-v3"


def test_validation_names_the_key_and_its_variable(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  max_connections: 0\n  prot: 9\nvad:\n  threshold: 0.2\n  neg_threshold: 0.4\n")
    with pytest.raises(SettingsError) as err:
        load(bad)
    text = str(err.value)
    assert "server.max_connections (env ASR_SERVER__MAX_CONNECTIONS)" in text
    assert "server.prot" in text and "neg_threshold" in text


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load(tmp_path / "nope.yaml")


def test_cli_refuses_bad_settings_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "services.asr"], capture_output=True, text=True, timeout=60,
                          env={"ASR_SERVER__PORT": "99999", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "server.port" in proc.stderr
