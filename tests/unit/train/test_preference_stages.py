"""Preference stages on the tiny model: pair rows, reference log-probs once, losses, metrics, saving."""

import json

import pytest
import torch
from train_tiny import run_config, save_tiny_model, write_config

from tunery.cli import main
from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import EncodeOptions, encode_pairwise
from tunery.data.pipeline import prepare_data
from tunery.errors import DataError
from tunery.losses.example_logps import example_logps
from tunery.train.run import load_tokenizer_and_template
from tunery.train.stages import get_stage
from tunery.train.stages.rm import VALUE_HEAD_FILE

PEER = "../shared/peer-data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def preference_keys(model_dir, output_dir, stage, **extra):
    dataset = "kto_demo" if stage == "kto" else "preference_demo"
    keys = {"stage": stage, "dataset": dataset, "per_device_train_batch_size": 2, "max_steps": 3, **extra}
    return run_config(model_dir, output_dir, **keys)


def train(tmp_path, keys):
    assert main(["train", str(write_config(tmp_path / "run.yaml", keys))]) == 0
    return [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]


def test_a_pair_row_holds_chosen_then_rejected_after_one_prompt(model_dir):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml"])
    tokenizer, template = load_tokenizer_and_template(config)
    conv = Conversation(messages=[Message(Role.USER, "hi")], chosen=Message(Role.ASSISTANT, "hello there"),
                        rejected=Message(Role.ASSISTANT, "go"))
    ids, labels, seq_lens, _ = encode_pairwise(conv, tokenizer, template, EncodeOptions(cutoff_len=64))
    first, second = ids[:seq_lens[0]], ids[seq_lens[0]:]
    prompt = template.encode_prompt(tokenizer, Conversation(messages=[Message(Role.USER, "hi")]))
    assert first[:len(prompt)] == second[:len(prompt)] == prompt
    assert tokenizer.decode(first[len(prompt):]).startswith("hello there")
    assert tokenizer.decode(second[len(prompt):]).startswith("go")
    assert labels[:len(prompt)] == [-100] * len(prompt)
    cutoff = len(prompt) + 3
    short_ids, _, short_lens, _ = encode_pairwise(conv, tokenizer, template, EncodeOptions(cutoff_len=cutoff))
    assert max(short_lens) == cutoff  # truncated together: the longer answer fills the budget exactly
    kept_prompt = short_lens[0] - (short_lens[0] - short_lens[1]) - 4  # "go" + <|im_end|> + newline = 4
    assert short_ids[:kept_prompt] == short_ids[short_lens[0]:short_lens[0] + kept_prompt]


def test_datasets_must_fit_the_stage(model_dir, tmp_path):
    for keys, message in (({"stage": "dpo", "dataset": "identity"}, "not a ranking dataset"),
                          ({"stage": "sft", "dataset": "preference_demo"}, "ranking dataset"),
                          ({"stage": "kto", "dataset": "identity"}, "kto_tag")):
        merged = {**run_config(model_dir, tmp_path), **keys}
        config = load_config(None, [f"{k}={v}" for k, v in merged.items()])
        tokenizer, template = load_tokenizer_and_template(config)
        with pytest.raises(DataError, match=message):
            prepare_data(config, tokenizer, template)


def test_peer_dpo_demo_loads_unchanged(model_dir):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", "stage=dpo",
                                "dataset=dpo_en_demo", f"dataset_dir={PEER}", "max_samples=20",
                                "cutoff_len=256"])
    tokenizer, template = load_tokenizer_and_template(config)
    data = prepare_data(config, tokenizer, template)
    assert data.report.datasets[0].skipped == 0 and len(data.train) == 20
    assert all(len(lens) == 2 for lens in data.train["seq_lens"])


def test_example_logps_of_a_flat_batch_match_each_example_alone(model_dir):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", "stage=dpo",
                                "dataset=preference_demo", "dataset_dir=builtin", "max_samples=3"])
    tokenizer, template = load_tokenizer_and_template(config)
    rows = prepare_data(config, tokenizer, template).train
    stage = get_stage("dpo", config, tokenizer)
    from tunery.model.attention import enable_varlen_attention
    from tunery.model.load import load_model

    model = load_model(config, tokenizer, for_training=False)
    enable_varlen_attention(model)
    together, tokens = example_logps(model, stage.collate([rows[i] for i in range(3)]))
    stage.flat_batches = False
    apart = [example_logps(model, stage.collate([rows[i]]))[0] for i in range(3)]
    torch.testing.assert_close(together, torch.cat(apart), rtol=1e-4, atol=1e-4)
    assert (tokens > 0).all()


@pytest.mark.parametrize("pref_loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
def test_dpo_family_trains_and_logs_the_reward_metrics(model_dir, tmp_path, pref_loss):
    keys = preference_keys(model_dir, tmp_path / "out", "dpo", pref_loss=pref_loss, pref_ftx=0.1)
    log = train(tmp_path, keys)
    first = log[0]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"):
        assert key in first, key
    if pref_loss in ("sigmoid", "hinge", "ipo"):  # at step 1 the policy still equals the reference
        assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_reference_log_probs_are_computed_once_before_training(model_dir, tmp_path, monkeypatch):
    import tunery.train.reference as reference

    calls = []
    original = reference.reference_logps
    monkeypatch.setattr(reference, "reference_logps", lambda *a: calls.append(1) or original(*a))
    train(tmp_path, preference_keys(model_dir, tmp_path / "out", "dpo", num_train_epochs=3, max_steps=-1,
                                    max_samples=4))
    assert len(calls) == 1, "one pass over the data, not one per epoch or step"


def test_full_finetuning_dpo_uses_a_loaded_reference(model_dir, tmp_path):
    log = train(tmp_path, preference_keys(model_dir, tmp_path / "out", "dpo", finetuning_type="full",
                                          learning_rate=1e-3))
    assert log[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)


def test_kto_trains_with_its_kl_estimate(model_dir, tmp_path):
    log = train(tmp_path, preference_keys(model_dir, tmp_path / "out", "kto"))
    assert "kl" in log[0] and log[0]["kl"] >= 0


def test_reward_model_saves_its_value_head_and_resumes(model_dir, tmp_path):
    keys = preference_keys(model_dir, tmp_path / "out", "rm", save_steps=2, max_steps=4)
    log = train(tmp_path, keys)
    assert "rewards/accuracies" in log[0]
    assert (tmp_path / "out" / VALUE_HEAD_FILE).is_file()
    assert (tmp_path / "out" / "checkpoint-2" / VALUE_HEAD_FILE).is_file()
    keys["max_steps"] = 6
    more = write_config(tmp_path / "more.yaml", keys)
    assert main(["train", str(more), "resume_from_checkpoint=true"]) == 0


def test_pairs_split_into_forward_passes_give_the_same_loss(model_dir):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml", "stage=dpo",
                                "pref_loss=simpo", "dataset=preference_demo", "dataset_dir=builtin",
                                "max_samples=6"])
    tokenizer, template = load_tokenizer_and_template(config)
    rows = prepare_data(config, tokenizer, template).train
    stage = get_stage("dpo", config, tokenizer)
    from tunery.model.attention import enable_varlen_attention
    from tunery.model.load import load_model

    model = load_model(config, tokenizer, for_training=False)
    enable_varlen_attention(model)
    batch = stage.collate([rows[i] for i in range(6)])
    pieces = stage.split(batch, max_tokens=int(batch["input_ids"].shape[1]) // 3)
    assert len(pieces) > 1 and sum(piece["pair_count"] for piece in pieces) == 6
    assert all(piece["pair_layout"].shape[0] == piece["pair_count"] for piece in pieces)  # whole pairs
    whole, _ = stage.compute_loss(model, batch)
    parts = sum(stage.compute_loss(model, piece)[0] for piece in pieces)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-4)
