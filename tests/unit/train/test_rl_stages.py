"""PPO and GRPO stages on the tiny model: a step runs, what trains, reference log-probs, the clipped
objective, saving and resuming. Rewards come from a stub source (the length of the completion)."""

import json
import shutil

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from train_tiny import save_tiny_model

from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.encode import conversation_to_json
from tunery.errors import ConfigError
from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model
from tunery.train.loop import TrainLoop
from tunery.train.rollout import completion_outputs, experience_batch, policy_outputs
from tunery.train.run import load_tokenizer_and_template
from tunery.train.stages import get_stage
from tunery.train.stages.ppo import STATE_FILE
from tunery.train.stages.rm import VALUE_HEAD_FILE


class LengthReward:
    """Stub reward source: longer completions score higher; one named function."""

    def __init__(self):
        self.names = ["length"]
        self.calls = []

    def score(self, prompts, completions, columns):
        from tunery.rewards.combine import RewardScores

        self.calls.append((list(prompts), list(completions), dict(columns)))
        scores = torch.tensor([len(text) / 10 for text in completions], dtype=torch.float32)
        return RewardScores(total=scores, per_function={"length": scores})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_rl") / "model")


def rl_config(model_dir, output_dir, stage, **keys):
    flat = {"model_name_or_path": str(model_dir), "template": "chatml", "stage": stage, "lora_rank": 4,
            "output_dir": str(output_dir), "logging_steps": 1, "save_steps": 1000, "max_steps": 2,
            "learning_rate": 5e-2, "per_device_train_batch_size": 2, "max_new_tokens": 6, "seed": 3,
            "report_to": "none", "num_generations": 3, "ppo_epochs": 2, "temperature": 1.0, "top_p": 1.0,
            **keys}
    return load_config(None, [f"{key}={value}" for key, value in flat.items()])


def prompt_rows(tokenizer, template, count=4):
    rows = []
    for index in range(count):
        conv = Conversation(messages=[Message(Role.USER, f"count to {index + 2}")])
        rows.append({"input_ids": template.encode_prompt(tokenizer, conv), "reference": str(index + 2),
                     "conversation": conversation_to_json(conv)})
    return Dataset.from_list(rows)


def build(config, eval_rows: bool = False):
    tokenizer, template = load_tokenizer_and_template(config)
    stage = get_stage(config.finetuning.stage, config, tokenizer)
    stage.reward_source = LengthReward()
    model = load_model(config, tokenizer, for_training=True)
    torch.manual_seed(0)  # the same new LoRA and value-head weights in every build
    model = stage.prepare_model(apply_finetuning(model, config.finetuning))
    rows = prompt_rows(tokenizer, template)
    return TrainLoop(config, model, tokenizer, stage, rows, rows if eval_rows else None)


def log_entries(output_dir):
    return [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def changed(before, model):
    return {name for name, param in model.named_parameters() if not torch.equal(before[name], param.detach())}


def test_grpo_steps_train_only_lora_and_log_rl_metrics(model_dir, tmp_path):
    loop = build(rl_config(model_dir, tmp_path / "out", "grpo"))
    before = snapshot(loop.model)
    loop.run()
    moved = changed(before, loop.model)
    assert moved and all("lora_" in name for name in moved)
    entries = log_entries(tmp_path / "out")
    assert len(entries) == 2
    for key in ("reward/mean", "reward/std", "rewards/length", "kl", "policy_loss", "clip_fraction",
                "completion_length", "rollout_tokens_per_second", "time/rollout", "time/update"):
        assert key in entries[0], key
    assert 1 <= entries[0]["completion_length"] <= 6
    # each prompt of the 2-prompt micro-batch was sampled num_generations=3 times, in one call
    prompts, _, columns = loop.stage.reward_source.calls[0]
    assert len(prompts) == 6 and prompts[0] == prompts[1] == prompts[2] != prompts[3]
    assert prompts[0].startswith("count to")  # the user's turn, not the rendered template
    assert columns["reference"][:3] == [columns["reference"][0]] * 3


def test_ppo_steps_train_lora_and_value_head_and_save_them(model_dir, tmp_path):
    config = rl_config(model_dir, tmp_path / "out", "ppo", ppo_buffer_size=2, save_steps=1)
    loop = build(config)
    assert loop.plan.grad_accum == 2  # a step collects ppo_buffer_size micro-batches of rollouts
    before = snapshot(loop.model)
    loop.run()
    moved = changed(before, loop.model)
    # prompts of 2 steps x 2 buffered micro-batches x batch 2, counted once although ppo_epochs=2
    assert loop.state.samples_seen == 8
    assert any("v_head" in name for name in moved) and any("lora_" in name for name in moved)
    assert all("lora_" in name or "v_head" in name for name in moved)
    entry = log_entries(tmp_path / "out")[0]
    for key in ("reward/mean", "kl", "policy_loss", "value_loss", "clip_fraction", "time/rollout"):
        assert key in entry, key
    checkpoint = tmp_path / "out" / "checkpoint-2"
    head = load_file(str(checkpoint / VALUE_HEAD_FILE))
    assert torch.equal(head["v_head.weight"], loop.model.get_base_model().v_head.weight.detach().float())
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["kl_coef"] == pytest.approx(loop.stage.kl_controller.value)


def test_reference_logps_equal_the_policy_before_the_first_update(model_dir, tmp_path):
    loop = build(rl_config(model_dir, tmp_path / "out", "ppo"))
    loop.stage.on_train_begin(loop)
    prompts = [row["input_ids"] for row in loop.train_data.select(range(2))]
    batch = experience_batch(prompts, [[70, 71, 72], [73, 74]], loop.stage.pad_id)
    policy, values = policy_outputs(loop, batch, with_values=True)
    reference = loop.stage.reference.logps(loop, batch)
    assert policy.shape == reference.shape == values.shape == (5,)
    assert torch.allclose(policy, reference)  # LoRA B starts at zero
    with torch.no_grad():
        for name, param in loop.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    assert not torch.allclose(policy_outputs(loop, batch)[0], loop.stage.reference.logps(loop, batch))


def test_log_probs_are_taken_at_the_sampling_temperature(model_dir, tmp_path):
    loop = build(rl_config(model_dir, tmp_path / "out", "grpo", temperature=0.5))
    assert loop.stage.sampling_temperature == 0.5
    prompts = [row["input_ids"] for row in loop.train_data.select(range(2))]
    batch = experience_batch(prompts, [[70, 71, 72], [73, 74]], loop.stage.pad_id)
    with torch.no_grad():
        ours, _ = completion_outputs(loop.model, batch, temperature=0.5)
        logits = loop.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    expected = torch.log_softmax(logits[:, :-1].float() / 0.5, -1)[keep].gather(1, targets[keep][:, None])
    assert torch.allclose(ours, expected.squeeze(1), atol=1e-5)
    greedy = build(rl_config(model_dir, tmp_path / "greedy", "ppo", do_sample=False, temperature=0.5))
    assert greedy.stage.sampling_temperature == 1.0  # greedy decoding samples from no temperature


def test_grpo_loss_with_old_equal_new_is_the_policy_gradient(model_dir, tmp_path):
    config = rl_config(model_dir, tmp_path / "out", "grpo", grpo_beta=0.0)
    loop = build(config)
    prompts = [row["input_ids"] for row in loop.train_data.select(range(2))]
    batch = experience_batch(prompts, [[70, 71, 72], [73, 74]], loop.stage.pad_id)
    batch["sequence_advantages"] = torch.tensor([1.5, -0.5])
    loss, count = loop.stage.compute_loss(loop.model, batch)
    assert count == 2
    params = [p for p in loop.model.parameters() if p.requires_grad]
    clipped = torch.autograd.grad(loss, params, allow_unused=True)
    logps, _ = completion_outputs(loop.model, batch)
    # the plain policy gradient of  -sum_i A_i * mean_t log p(y_it)
    plain = -(1.5 * logps[:3].mean() - 0.5 * logps[3:].mean())
    expected = torch.autograd.grad(plain, params, allow_unused=True)
    for got, want in zip(clipped, expected, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            assert torch.allclose(got, want, atol=1e-6)


def test_ppo_resumes_from_a_checkpoint_like_an_uninterrupted_run(model_dir, tmp_path):
    whole = build(rl_config(model_dir, tmp_path / "whole", "ppo", save_steps=1))
    whole.run()
    (tmp_path / "part").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-1", tmp_path / "part" / "checkpoint-1")
    resumed = build(rl_config(model_dir, tmp_path / "part", "ppo", save_steps=1, resume_from_checkpoint=True))
    # a different value head and KL coefficient before resuming: the checkpoint must bring both back
    resumed.stage.kl_controller.value = 1.0
    torch.nn.init.zeros_(resumed.model.get_base_model().v_head.weight)
    resumed.run()
    assert resumed.stage.kl_controller.value == pytest.approx(whole.stage.kl_controller.value)
    resumed_params = dict(resumed.model.named_parameters())
    for name, param in whole.model.named_parameters():
        assert torch.allclose(param, resumed_params[name], atol=1e-5), name


def test_grpo_refuses_greedy_decoding(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="do_sample"):
        get_stage("grpo", rl_config(model_dir, tmp_path, "grpo", do_sample=False))


def test_grpo_generates_under_gradient_checkpointing(model_dir, tmp_path):
    loop = build(rl_config(model_dir, tmp_path / "out", "grpo", gradient_checkpointing=True, max_steps=1))
    before = snapshot(loop.model)
    loop.run()
    assert changed(before, loop.model)
    assert log_entries(tmp_path / "out")[0]["completion_length"] >= 1


def test_rl_stages_refuse_evaluation_before_rolling_out(model_dir, tmp_path):
    loop = build(rl_config(model_dir, tmp_path / "out", "ppo"), eval_rows=True)
    with pytest.raises(ConfigError, match="no evaluation loss"):
        loop.run()
    assert not loop.stage.reward_source.calls
