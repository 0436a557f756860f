"""LLaMA Pro: expanded blocks leave the outputs unchanged, and use_llama_pro trains only them."""

import json

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import run_config as tiny_run_config
from train_tiny import save_tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from tunery.cli import main
from tunery.config.load import build_config
from tunery.config.schema import RunConfig
from tunery.errors import ConfigError, ModelError
from tunery.model.adapters import apply_finetuning
from tunery.model.expand import expand_model
from tunery.model.llama_pro import expanded_layer_ids
from tunery.model.load import load_model
from tunery.train.run import run_training

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 128,
         "tie_word_embeddings": False}
IDS = torch.randint(3, 64, (2, 20), generator=torch.Generator().manual_seed(0))


def save_model(folder, tokenizer, config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for name, param in model.named_parameters():  # random norms too, so copied blocks are not all alike
        if "norm" in name:
            param.data.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def four_layers(tmp_path, tokenizer):
    return save_model(tmp_path / "four", tokenizer, LlamaConfig(**SMALL))


def logits_of(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits, model


def test_expanded_model_gives_the_same_logits(four_layers, tmp_path):
    result = expand_model(str(four_layers), 2, tmp_path / "pro")
    assert result.new_layers == [2, 5]  # after every 2 original blocks: 0 1 [2] 2 3 [5]
    before, original = logits_of(four_layers)
    after, expanded = logits_of(tmp_path / "pro")
    assert expanded.config.num_hidden_layers == 6 and len(expanded.model.layers) == 6
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    source_of = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    for new, old in source_of.items():
        for name, param in expanded.model.layers[new].named_parameters():
            reference = original.model.layers[old].get_parameter(name)
            if new in result.new_layers and ("o_proj" in name or "down_proj" in name):
                assert torch.count_nonzero(param) == 0, name
            else:
                assert torch.equal(param, reference), (new, name)
    assert (tmp_path / "pro" / "tokenizer.json").is_file()


def test_expansion_keeps_per_layer_types(tmp_path, tokenizer):
    config = Qwen2Config(**SMALL, layer_types=["full_attention"] * 3 + ["sliding_attention"],
                         use_sliding_window=True, sliding_window=8)
    folder = save_model(tmp_path / "qwen", tokenizer, config)
    expand_model(str(folder), 2, tmp_path / "pro")
    saved = json.loads((tmp_path / "pro" / "config.json").read_text())
    assert saved["layer_types"] == ["full_attention"] * 4 + ["sliding_attention"] * 2
    torch.testing.assert_close(logits_of(tmp_path / "pro")[0], logits_of(folder)[0], atol=1e-5, rtol=0)


def test_expand_refuses_bad_requests(four_layers, tmp_path):
    with pytest.raises(ConfigError, match=r"does not divide the model's 4 layers.*choose one of 1, 2, 4"):
        expand_model(str(four_layers), 3, tmp_path / "pro")
    with pytest.raises(ModelError, match="no-such-model"):
        expand_model("no-such-model", 2, tmp_path / "pro")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        expand_model(str(four_layers), 2, busy)


def test_expanded_layer_ids_follow_the_stride():
    assert expanded_layer_ids(36, 6) == [5, 11, 17, 23, 29, 35]  # SmolLM2's 30 layers + 6
    with pytest.raises(ConfigError, match="freeze_trainable_layers"):
        expanded_layer_ids(6, 4)


def training_config(folder, **finetuning) -> RunConfig:
    config = RunConfig()
    config.model.model_name_or_path = str(folder)
    config.architecture.use_llama_pro = True
    for key, value in {"freeze_trainable_layers": 2, **finetuning}.items():
        setattr(config.finetuning, key, value)
    return config


def trainable_layers(model) -> set[int]:
    found = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            found.add(int(name.split("layers.")[1].split(".")[0]))
    return found


@pytest.fixture
def expanded(four_layers, tmp_path):
    return expand_model(str(four_layers), 2, tmp_path / "pro").folder


def test_freeze_trains_only_the_new_blocks(expanded, tokenizer):
    config = training_config(expanded, finetuning_type="freeze")
    model = apply_finetuning(load_model(config, tokenizer, True), config.finetuning, run_config=config)
    assert trainable_layers(model) == {2, 5}
    in_new_blocks = [n for n, _ in model.named_parameters() if ".2." in n or ".5." in n]
    assert all(model.get_parameter(n).requires_grad for n in in_new_blocks)
    config.architecture.use_llama_pro = False  # plain freeze tuning: the last two blocks instead
    plain = apply_finetuning(load_model(config, tokenizer, True), config.finetuning, run_config=config)
    assert trainable_layers(plain) == {4, 5}


def test_freeze_modules_apply_inside_the_new_blocks(expanded, tokenizer):
    config = training_config(expanded, finetuning_type="freeze", freeze_trainable_modules=["mlp"])
    model = apply_finetuning(load_model(config, tokenizer, True), config.finetuning, run_config=config)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".mlp." in n and (".2." in n or ".5." in n) for n in names)


def test_lora_goes_only_on_the_new_blocks(expanded, tokenizer):
    config = training_config(expanded, finetuning_type="lora", lora_target=["all"])
    model = apply_finetuning(load_model(config, tokenizer, True), config.finetuning, run_config=config)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    lora_layers = {int(n.split("layers.")[1].split(".")[0]) for n in lora_names}
    assert lora_layers == {2, 5}
    assert trainable_layers(model) == {2, 5}
    wrapped = {n.split(".")[-1] for n, m in model.named_modules()
               if ".layers.5." in n and hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_llama_pro_refuses_full_tuning(expanded, tokenizer):
    config = training_config(expanded, finetuning_type="full")
    with pytest.raises(ConfigError, match="use_llama_pro needs"):
        apply_finetuning(load_model(config, tokenizer, True), config.finetuning, run_config=config)


def test_cli_writes_a_loadable_model_and_prints_the_keys(four_layers, tmp_path, capsys, tokenizer):
    command = ["expand", "--model", str(four_layers), "--num_expand"]
    assert main([*command, "4", "--output", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "freeze_trainable_layers: 4" in printed and "use_llama_pro: true" in printed
    config = RunConfig()
    config.model.model_name_or_path = str(tmp_path / "p")
    model = load_model(config, tokenizer, for_training=False)
    assert model.config.num_hidden_layers == 8
    assert main([*command, "3", "--output", str(tmp_path / "q")]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_training_changes_only_the_new_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    tiny = save_tiny_model(tmp_path / "tiny")
    pro = expand_model(str(tiny), 2, tmp_path / "pro").folder  # 2 layers -> 4, new at 1 and 3
    keys = tiny_run_config(pro, tmp_path / "out", finetuning_type="freeze", freeze_trainable_layers=2,
                           use_llama_pro=True, max_steps=3)
    run_training(build_config(keys))
    before, after = load_file(pro / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key].to(before[key].dtype))}
    assert changed and all(".layers.1." in key or ".layers.3." in key for key in changed)
    assert any("o_proj" in key for key in changed)  # the zeroed projections start to learn
