"""The config loader: flat LLaMA-Factory keys, overrides, and errors for people."""

import json

import pytest

from tunery.config import load_config, save_config
from tunery.config.load import KEY_OWNER
from tunery.errors import ConfigError

LLAMAFACTORY_YAML = """\
### model
model_name_or_path: smollm2-135m-instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: smollm2
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 2

### output
output_dir: saves/smollm2/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


@pytest.fixture
def lf_yaml(tmp_path):
    path = tmp_path / "llama3_lora_sft.yaml"
    path.write_text(LLAMAFACTORY_YAML)
    return path


def test_llamafactory_yaml_maps_onto_sections(lf_yaml):
    config = load_config(lf_yaml)
    assert config.model.trust_remote_code is True
    assert config.data.dataset == ["identity", "alpaca_en_demo"]
    assert config.finetuning.lora_target == ["all"]
    assert config.training.gradient_accumulation_steps == 8
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.training.lr_scheduler_type == "cosine"
    assert config.training.bf16 is True
    assert config.finetuning.plot_loss is True


def test_overrides_win_and_are_typed(lf_yaml):
    config = load_config(lf_yaml, ["lora_rank=16", "learning_rate=2e-4", "dataset=a, b"])
    assert config.finetuning.lora_rank == 16
    assert config.training.learning_rate == pytest.approx(2e-4)
    assert config.data.dataset == ["a", "b"]


def test_nested_sections_and_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"finetuning": {"lora_rank": 4}, "dataset": "identity"}))
    config = load_config(path)
    assert config.finetuning.lora_rank == 4
    assert config.data.dataset == ["identity"]


def test_unknown_key_suggests_the_right_one(lf_yaml):
    with pytest.raises(ConfigError, match=r"unknown key 'lora_rnak' — did you mean 'lora_rank'\?"):
        load_config(lf_yaml, ["lora_rnak=16"])


def test_unknown_key_error_names_the_file(lf_yaml):
    lf_yaml.write_text(LLAMAFACTORY_YAML + "cutof_len: 12\n")
    with pytest.raises(ConfigError, match=r"llama3_lora_sft.yaml: unknown key 'cutof_len'"):
        load_config(lf_yaml)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("use_badam=true", "key 'use_badam' is not supported yet"),
        ("deepspeed=ds_z3_config.json", "key 'deepspeed' is not supported yet"),
    ],
)
def test_features_not_built_are_rejected_not_ignored(override, phrase):
    with pytest.raises(ConfigError, match=phrase):
        load_config(None, [override])


def test_bad_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"key 'learning_rate': .*valid number.*\(got 'fast'\)"):
        load_config(None, ["learning_rate=fast"])


def test_cross_field_check_reads_as_a_sentence():
    with pytest.raises(ConfigError, match=r"^command line: bf16 and fp16 are both true; choose one$"):
        load_config(None, ["bf16=true", "fp16=true"])


def test_disable_gradient_checkpointing_alias():
    assert load_config(None, ["disable_gradient_checkpointing=true"]).training.gradient_checkpointing is False
    assert load_config(None, ["gradient_checkpointing=true"]).training.gradient_checkpointing is True


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["lora_rank"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_packing_defaults_follow_the_stage():
    assert load_config(None, ["stage=pt"]).packing_enabled is True
    assert load_config(None, ["stage=sft"]).packing_enabled is False
    assert load_config(None, ["stage=sft", "packing=true"]).packing_enabled is True
    assert load_config(None, ["stage=sft", "neat_packing=true"]).packing_enabled is True


def test_mask_history_excludes_train_on_prompt():
    with pytest.raises(ConfigError, match="mask_history and train_on_prompt cannot both be true"):
        load_config(None, ["mask_history=true", "train_on_prompt=true"])


def test_saved_config_loads_back_identically(lf_yaml, tmp_path):
    config = load_config(lf_yaml, ["lora_rank=32"])
    saved = tmp_path / "run_config.yaml"
    save_config(config, saved)
    assert load_config(saved) == config


def test_every_issue_key_is_accepted():
    keys = [
        "model_name_or_path",
        "adapter_name_or_path",
        "trust_remote_code",
        "template",
        "stage",
        "do_train",
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "additional_target",
        "loraplus_lr_ratio",
        "freeze_trainable_layers",
        "freeze_trainable_modules",
        "dataset",
        "eval_dataset",
        "dataset_dir",
        "cutoff_len",
        "max_samples",
        "val_size",
        "packing",
        "neat_packing",
        "train_on_prompt",
        "mask_history",
        "preprocessing_num_workers",
        "overwrite_cache",
        "tokenized_path",
        "output_dir",
        "overwrite_output_dir",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "plot_loss",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "lr_scheduler_type",
        "warmup_ratio",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "bf16",
        "fp16",
        "seed",
        "report_to",
        "resume_from_checkpoint",
        "gradient_checkpointing",
        "flash_attn",
        "rope_scaling",
        "train_from_scratch",
    ]
    missing = [key for key in keys if key not in KEY_OWNER]
    assert missing == []


def test_keys_naming_what_tunery_always_does_are_accepted():
    config = load_config(None, ["save_strategy=steps", "mix_strategy=concat", "use_fast_tokenizer=true"])
    assert config == load_config(None, [])
    with pytest.raises(ConfigError, match="mix_strategy: interleave_under is not supported yet"):
        load_config(None, ["mix_strategy=interleave_under"])


def test_other_llamafactory_keys_say_not_supported_yet():
    with pytest.raises(ConfigError, match="key 'resize_vocab' is not supported yet"):
        load_config(None, ["resize_vocab=true"])


def test_a_bare_no_is_the_eval_strategy_not_false(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("eval_strategy: no\n")
    assert load_config(path).training.eval_strategy == "no"
    assert load_config(None, ["eval_strategy=no"]).training.eval_strategy == "no"


@pytest.mark.parametrize(("value", "weights"), [("2", [2.0]), ("1.0, 0.5", [1.0, 0.5])])
def test_reward_weights_accept_one_number_or_a_list(value, weights):
    assert load_config(None, [f"reward_weights={value}"]).rl.reward_weights == weights
