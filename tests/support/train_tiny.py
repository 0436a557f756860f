"""A tiny Hugging Face model folder (byte-level tokenizer + 2-layer Llama) for fast real runs.

Training integration tests run ``run_training`` / ``python -m tunery.train.run``
end to end on it: the same loaders, templates and data pipeline as a real
model, at a fraction of a second per step.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def save_tiny_model(folder: Path) -> Path:
    """Write a tokenizer (256 bytes + ChatML specials) and a random tiny Llama to ``folder``."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIALS + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"], tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(model_dir: Path, output_dir: Path, **keys) -> dict:
    """A short sft run on the built-in identity data, as flat YAML keys."""
    return {
        "model_name_or_path": str(model_dir), "template": "chatml", "stage": "sft",
        "finetuning_type": "lora", "lora_rank": 4, "dataset": "identity", "dataset_dir": "builtin",
        "cutoff_len": 96, "max_samples": 24, "output_dir": str(output_dir), "logging_steps": 1,
        "per_device_train_batch_size": 4, "learning_rate": 5e-3, "max_steps": 6, "save_steps": 1000,
        "report_to": "none", "seed": 7, **keys,
    }


def write_config(path: Path, keys: dict) -> Path:
    path.write_text(yaml.safe_dump(keys))
    return path


def subprocess_env(home: Path) -> dict:
    """One thread per process (same arithmetic everywhere) and a private cache folder."""
    env = {**os.environ, "TUNERY_HOME": str(home), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_module(args: list[str], home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=subprocess_env(home), capture_output=True, text=True, timeout=timeout,
        cwd=REPO_ROOT,
    )
