"""The command line: help generated from the config, errors as one sentence, no tracebacks."""

import subprocess
import sys

import pytest

from tunery import __version__
from tunery.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunery", *args], capture_output=True, text=True, timeout=120
    )


def test_train_help_lists_config_keys_with_descriptions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "lora_rank (default: 8)" in text
    assert "LoRA rank." in text
    assert "cutoff_len (default: 2048)" in text


def test_chat_help_lists_generation_settings(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = capsys.readouterr().out
    assert "temperature (default: 0.95)" in text
    assert "`clear` to reset" in text


def test_bad_key_is_one_sentence_and_exit_code_2(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: identity\nlora_rnak: 8\n")
    result = run_cli("train", str(config))
    assert result.returncode == 2
    assert "unknown key 'lora_rnak' — did you mean 'lora_rank'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_reported(tmp_path):
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code == 2


def test_version_and_env(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"tunery {__version__}"
    assert main(["env"]) == 0
    report = capsys.readouterr().out
    assert "torch:" in report
    assert "transformers:" in report
    assert "CPU cores:" in report


def test_chat_flags_become_generation_settings():
    from tunery.cli import build_parser, chat_config

    args = build_parser().parse_args(
        [
            "chat",
            "--model",
            "m",
            "--temperature",
            "0.3",
            "--max-new-tokens",
            "7",
            "--system",
            "Note: be brief.",
            "top_k=5",
        ]
    )
    config = chat_config(args)
    assert config.generation.temperature == 0.3
    assert config.generation.max_new_tokens == 7
    assert config.generation.top_k == 5
    assert config.data.default_system == "Note: be brief."
    assert config.model.model_name_or_path == "m"
    assert config.training.do_train is False


def test_data_check_help_lists_data_keys(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    assert "cutoff_len (default: 2048)" in capsys.readouterr().out
