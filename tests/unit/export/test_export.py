"""`tunery export`: merged weights, shards, atomic replacement, refusals, tokenizer and Modelfile."""

import hashlib
import json
import re
import shutil

import pytest
import torch
from exportfakes import export_config, logits_of
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunery.export.run as export_run
from tunery.cli import main
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.templates import get_template
from tunery.errors import ConfigError, ModelError
from tunery.export import export_model
from tunery.export.modelfile import build_modelfile, go_literal, ollama_template


def test_merged_export_gives_the_logits_of_base_plus_adapter(tiny_model, tiny_adapter, tmp_path):
    result = export_model(export_config(tiny_model, tmp_path / "out", tiny_adapter))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_logits = logits_of(base, tokenizer)
    with_adapter = logits_of(PeftModel.from_pretrained(base, tiny_adapter).eval(), tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(result.folder, dtype=torch.float32)
    merged_logits = logits_of(merged, AutoTokenizer.from_pretrained(result.folder))

    assert (with_adapter - base_logits).abs().max() > 0.05  # the adapter matters
    torch.testing.assert_close(merged_logits, with_adapter, atol=1e-5, rtol=1e-5)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "Modelfile",
            "export_config.yaml", "chat_template.jinja"} <= set(result.files)


def test_shards_are_split_by_the_size_limit_and_load_back(tiny_model, tiny_adapter, tmp_path):
    result = export_model(export_config(tiny_model, tmp_path / "out", tiny_adapter), max_shard_size="40KB")

    shards = sorted(result.folder.glob("model-*-of-*.safetensors"))
    index = json.loads((result.folder / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert all(shard.stat().st_size <= 40_000 + 4096 for shard in shards)  # tensors + a small header
    merged = AutoModelForCausalLM.from_pretrained(result.folder, dtype=torch.float32)
    single = AutoModelForCausalLM.from_pretrained(
        export_model(export_config(tiny_model, tmp_path / "one", tiny_adapter)).folder, dtype=torch.float32
    )
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()  # 5 GB default: one file
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.testing.assert_close(logits_of(merged, tokenizer), logits_of(single, tokenizer))


def test_export_size_key_sets_the_shard_limit(tiny_model, tmp_path, monkeypatch):
    seen = {}
    original = export_run.save_weights

    def recording(model, folder, max_shard_size, legacy):
        seen["size"] = max_shard_size
        original(model, folder, max_shard_size, legacy)

    monkeypatch.setattr(export_run, "save_weights", recording)
    export_model(export_config(tiny_model, tmp_path / "out", export_size=2))
    assert seen["size"] == "2GB"


def test_legacy_format_writes_bin_shards_that_load(tiny_model, tiny_adapter, tmp_path):
    config = export_config(tiny_model, tmp_path / "out", tiny_adapter, export_legacy_format=True)
    result = export_model(config, max_shard_size="40KB")

    assert not list(result.folder.glob("*.safetensors"))
    assert len(list(result.folder.glob("pytorch_model-*-of-*.bin"))) >= 3
    assert (result.folder / "pytorch_model.bin.index.json").is_file()
    reference = export_model(export_config(tiny_model, tmp_path / "ref", tiny_adapter)).folder
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.testing.assert_close(
        logits_of(AutoModelForCausalLM.from_pretrained(result.folder, dtype=torch.float32), tokenizer),
        logits_of(AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32), tokenizer),
    )


def folder_digest(folder) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_failed_export_leaves_the_previous_export_intact_and_no_temporary_files(
    tiny_model, tiny_adapter, tmp_path, monkeypatch
):
    target = tmp_path / "out"
    export_model(export_config(tiny_model, target))
    before = folder_digest(target)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_run, "build_modelfile", broken)  # fails after the weights are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(export_config(tiny_model, target, tiny_adapter))

    assert folder_digest(target) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_failed_first_export_creates_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_run, "write_gguf", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        export_model(export_config(tiny_model, tmp_path / "out", export_gguf="f16"))
    assert list(tmp_path.iterdir()) == []


def test_a_previous_export_is_replaced_without_stale_files(tiny_model, tiny_adapter, tmp_path):
    target = tmp_path / "out"
    export_model(export_config(tiny_model, target, export_gguf="f16"))
    result = export_model(export_config(tiny_model, target, tiny_adapter), max_shard_size="40KB")

    assert not (target / "model-f16.gguf").exists()
    assert not (target / "model.safetensors").exists()
    assert "adapter_name_or_path" in (target / "export_config.yaml").read_text()
    assert result.files == sorted(path.name for path in target.iterdir())


def test_loftq_adapter_is_refused_before_merging(tiny_model, tiny_adapter, tmp_path):
    adapter = tmp_path / "loftq"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "run_config.yaml").write_text("finetuning_type: lora\nloftq_bits: 4\nloftq_iter: 1\n")
    with pytest.raises(ConfigError, match=r"LoftQ \(loftq_bits: 4\).*quantization_bit=4"):
        export_model(export_config(tiny_model, tmp_path / "out", adapter))
    assert not (tmp_path / "out").exists()
    (adapter / "run_config.yaml").write_text("finetuning_type: lora\nloftq_bits: null\n")
    assert export_model(export_config(tiny_model, tmp_path / "out", adapter)).folder.is_dir()


def test_quantized_base_is_refused_with_advice(tiny_model, tmp_path):
    quantized = tmp_path / "quantized"
    shutil.copytree(tiny_model, quantized)
    config_file = quantized / "config.json"
    declared = json.loads(config_file.read_text())
    declared["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config_file.write_text(json.dumps(declared))

    with pytest.raises(ModelError, match=r"quantized \(bitsandbytes\).*full-precision base"):
        export_model(export_config(quantized, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_export_dir_is_a_config_error(tiny_model):
    config = export_config(tiny_model, "unused")
    config.export.export_dir = None
    with pytest.raises(ConfigError, match="export_dir is not set"):
        export_model(config)


def test_a_folder_that_is_not_an_export_is_never_replaced(tiny_model, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and holds no previous export"):
        export_model(export_config(tiny_model, target))
    assert (target / "notes.txt").read_text() == "keep me"


def test_exporting_into_the_adapter_or_model_folder_is_refused(tiny_model, tiny_adapter):
    with pytest.raises(ConfigError, match="holds the model or adapter"):
        export_model(export_config(tiny_model, tiny_adapter, tiny_adapter))
    with pytest.raises(ConfigError, match="holds the model or adapter"):
        export_model(export_config(tiny_model, tiny_model.parent))


def test_exported_tokenizer_and_generation_config_follow_the_template(tiny_model, tmp_path):
    result = export_model(export_config(tiny_model, tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    template = get_template("chatml", AutoTokenizer.from_pretrained(tiny_model))
    conversation = Conversation(
        [Message(Role.USER, "Hi"), Message(Role.ASSISTANT, "Hello!"), Message(Role.USER, "Who are you?")],
        system="Be brief.",
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Who are you?"}]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.decode(template.encode_prompt(tokenizer, conversation))
    generation = json.loads((result.folder / "generation_config.json").read_text())
    stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>")}
    assert set(generation["eos_token_id"]) == stops


# ---------------------------------------------------------------- Modelfile


def render_go_template(body: str, system: str, messages: list[dict]) -> str:
    """Render the subset of Go's text/template that ollama_template writes, by translating it to Jinja."""
    import jinja2

    blocks, out = [], []
    for literal, action in re.findall(r"(.*?)(?:\{\{\s*(.*?)\s*\}\}|$)", body, flags=re.DOTALL):
        out.append(literal.replace("{", "{{ '{' }}"))
        if not action:
            continue
        if action == "range .Messages":
            blocks.append("endfor")
            out.append("{% for m in Messages %}")
        elif action.startswith("if ") or action.startswith("else if "):
            condition = action.removeprefix("else ").removeprefix("if ")
            match = re.fullmatch(r'eq \.Role "(\w+)"', condition)
            test = f"m.Role == '{match.group(1)}'" if match else condition.replace("$system", "ns.system")
            test = test.replace(".System", "System")
            if action.startswith("else"):
                out.append("{% elif " + test + " %}")
            else:
                blocks.append("endif")
                out.append("{% if " + test + " %}")
        elif action == "end":
            out.append("{% " + blocks.pop() + " %}")
        elif action == "$system := .System":
            out.append("{% set ns = namespace(system=System) %}")
        elif action == '$system = ""':
            out.append("{% set ns.system = '' %}")
        else:
            value = {".Content": "m.Content", ".System": "System", "$system": "ns.system"}.get(action, action)
            out.append("{{ " + value + " }}")
    assert not blocks
    hf = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return jinja2.Environment(keep_trailing_newline=True).from_string("".join(out)).render(
        System=system, Messages=hf
    )


@pytest.mark.parametrize("name", ["chatml", "smollm2", "llama2", "qwen", "mistral"])
def test_ollama_template_prompts_like_the_tunery_template(tiny_model, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = get_template(name, tokenizer)
    conversation = Conversation(
        [Message(Role.USER, "Hi"), Message(Role.ASSISTANT, "Hello!"), Message(Role.USER, "Who are you?")],
        system="Be brief.",
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Who are you?"}]

    rendered = render_go_template(ollama_template(template, tokenizer), "Be brief.", messages)
    assert rendered == tokenizer.decode(template.encode_prompt(tokenizer, conversation))


def test_literal_braces_survive_the_go_template():
    text = 'call {"name": {{x}}} {'
    assert render_go_template(go_literal(text), "", []) == text


def test_modelfile_for_smollm2_has_template_system_and_stops(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = get_template("smollm2", tokenizer)
    text = build_modelfile(template, tokenizer, "./model-q8_0.gguf")

    assert "\nFROM ./model-q8_0.gguf\n" in text
    assert '\nTEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' in text
    assert '\nSYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face."""\n' in text
    assert text.count("PARAMETER stop") == 1 and 'PARAMETER stop "<|im_end|>"\n' in text


def test_exported_modelfile_points_at_the_folder_and_lists_chatml_stops(tiny_model, tmp_path):
    result = export_model(export_config(tiny_model, tmp_path / "out"))
    text = (result.folder / "Modelfile").read_text()

    assert "\nFROM .\n" in text
    user_turn = "<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n"
    assert '{{ if eq .Role "user" }}' + user_turn in text
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\n' in text
    assert "SYSTEM" not in text  # chatml has no default system prompt


# ---------------------------------------------------------------- command line


def test_cli_exports_and_reports_bad_input_in_one_line(tiny_model, tmp_path, capsys):
    config_file = tmp_path / "export.yaml"
    config_file.write_text(f"model_name_or_path: {tiny_model}\ntemplate: chatml\n")

    assert main(["export", str(config_file), f"export_dir={tmp_path / 'out'}"]) == 0
    assert f"Exported to {tmp_path / 'out'}" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()

    assert main(["export", str(config_file)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: export_dir is not set")
