"""RewardScorer and `tunery score` on the tiny model, after a few steps of stage rm.

"Correct" means: the reward the rm stage itself computes for an example of a
training batch (its collated pair row, the PEFT model with the saved head), for
the same answer rendered from the same conversation.
"""

import json

import pytest
import torch
from train_tiny import run_config, save_tiny_model, write_config

from tunery.cli import main
from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.data.pipeline import prepare_data
from tunery.data.registry import BUILTIN_DIR
from tunery.errors import DataError, ModelError
from tunery.infer.reward import RewardScorer
from tunery.model.adapters import apply_finetuning
from tunery.model.load import load_model
from tunery.train.run import choose_batching, load_tokenizer_and_template
from tunery.train.stages import get_stage
from tunery.train.stages.rm import last_token_scores

QUESTION = Message(Role.USER, "What is 3 plus 3?")
GOOD, BAD = Message(Role.ASSISTANT, "3 plus 3 is 6."), Message(Role.ASSISTANT, "I won't answer that.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("rm-tiny") / "model")


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    """(config file, output_dir) of a 3-step rm run: a LoRA adapter plus value_head.safetensors."""
    folder = tmp_path_factory.mktemp("rm-run")
    keys = run_config(model_dir, folder / "out", stage="rm", dataset="preference_demo",
                      per_device_train_batch_size=2, max_steps=3)
    config_file = write_config(folder / "rm.yaml", keys)
    assert main(["train", str(config_file)]) == 0
    return config_file, folder / "out"


def scorer_config(trained, *overrides):
    config_file, out = trained
    return load_config(str(config_file), [f"adapter_name_or_path={out}", "do_train=false", *overrides])


@pytest.fixture(scope="module")
def scorer(trained):
    with RewardScorer(scorer_config(trained)) as loaded:
        yield loaded


def stage_scores(trained, rows: int) -> tuple[list[list[int]], torch.Tensor]:
    """The examples of the first ``rows`` training pair rows and the rm stage's scores for them,
    computed as training computes them: unmerged PEFT model, saved head, the stage's own batch."""
    config_file, out = trained
    config = load_config(str(config_file), [f"adapter_name_or_path={out}"])
    tokenizer, template = load_tokenizer_and_template(config)
    data = prepare_data(config, tokenizer, template).train.select(range(rows))
    stage = get_stage("rm", config, tokenizer)
    model = load_model(config, tokenizer, for_training=True)
    choose_batching(config, model, stage)
    model = stage.prepare_model(apply_finetuning(model, config.finetuning, [str(out)]))
    stage.load_extras(model, out)
    model.eval()
    examples = []
    for ids, lens in zip(data["input_ids"], data["seq_lens"], strict=True):
        examples += [ids[: lens[0]], ids[lens[0]:]]
    with torch.no_grad():
        return examples, last_token_scores(model, stage.collate(list(data)))


def demo_conversations() -> list[Conversation]:
    """Every (question, answer) of the built-in preference pairs, chosen and rejected."""
    rows = json.loads((BUILTIN_DIR / "preference_demo.json").read_text())
    return [Conversation(messages=[Message(Role.USER, row["instruction"]), Message(Role.ASSISTANT, row[key])])
            for row in rows for key in ("chosen", "rejected")]


def test_scores_equal_the_rm_stages_own_scores(trained, scorer):
    examples, expected = stage_scores(trained, rows=6)
    assert len(examples) == 12 and expected.shape == (12,)
    cutoff = scorer.config.data.cutoff_len
    rendered = {tuple(scorer.encode_conversation(conv, cutoff)): conv for conv in demo_conversations()}
    conversations = [rendered[tuple(ids)] for ids in examples]  # rendered token for token as in training
    scores = scorer.score_conversations(conversations)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(scores)) > 1  # a trained head, not a constant


def test_batching_does_not_change_scores(trained, scorer):
    conversations = [Conversation(messages=[QUESTION, answer]) for answer in (GOOD, BAD)] * 3
    texts = ["hello there", "a much longer text that takes many more tokens than the first", "x"]
    alone = [scorer.score_conversations([conv])[0] for conv in conversations]
    assert scorer.score_conversations(conversations) == pytest.approx(alone, abs=1e-5)
    with RewardScorer(scorer_config(trained, "flash_attn=sdpa", "per_device_eval_batch_size=2")) as padded:
        assert not padded.flat and scorer.flat
        assert padded.score_conversations(conversations) == pytest.approx(alone, abs=1e-5)
        assert padded.score_texts(texts) == pytest.approx(scorer.score_texts(texts), abs=1e-5)


def test_texts_are_truncated_to_max_length(scorer):
    text = "a long text that is cut after its first few tokens"
    ids = scorer.encode_text(text, max_length=1000)
    head = scorer.tokenizer.decode(ids[:8])
    assert scorer.score_texts([text], max_length=8) == pytest.approx(scorer.score_texts([head]), abs=1e-6)
    assert scorer.score_texts([text]) != pytest.approx(scorer.score_texts([head]), abs=1e-6)


def test_the_system_prompt_and_tools_are_rendered(scorer):
    plain = Conversation(messages=[QUESTION, GOOD])
    with_system = Conversation(messages=[QUESTION, GOOD], system="You are terse.")
    assert scorer.encode_conversation(with_system, 256) != scorer.encode_conversation(plain, 256)
    assert scorer.score_conversations([with_system]) != scorer.score_conversations([plain])


def test_bad_inputs_are_clear_errors(scorer):
    with pytest.raises(DataError, match="Conversation 2 must end with the assistant answer"):
        scorer.score_conversations([Conversation(messages=[QUESTION, GOOD]),
                                    Conversation(messages=[QUESTION])])
    with pytest.raises(DataError, match="Text 1 is empty"):
        scorer.score_texts([""])


def test_a_model_without_a_value_head_is_refused(model_dir, trained):
    config = load_config(None, [f"model_name_or_path={model_dir}", "template=chatml"])
    no_head = r"not trained with stage rm: its folder has no value_head\.safetensors"
    with pytest.raises(ModelError, match=no_head):
        RewardScorer(config)
    sft_adapter = model_dir.parent / "sft-adapter"
    sft_adapter.mkdir()
    with pytest.raises(ModelError, match=r"adapter '.*sft-adapter' was not trained with stage rm"):
        RewardScorer(load_config(None, [f"model_name_or_path={model_dir}",
                                        f"adapter_name_or_path={sft_adapter}"]))


# ----- tunery score ---------------------------------------------------------------------------------


def write_inputs(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_the_score_command_prints_one_score_per_input(trained, scorer, tmp_path, capsys):
    config_file, out = trained
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "What is 3 plus 3?"},
            {"role": "assistant", "content": "3 plus 3 is 6."}]
    inputs = write_inputs(tmp_path / "in.jsonl", [{"messages": chat}, {"text": "raw text"}])
    args = ["score", str(config_file), f"adapter_name_or_path={out}", "--text", "hello", "--file", inputs]
    assert main([*args, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    conv = Conversation(messages=[QUESTION, GOOD], system="Be kind.")
    expected = [*scorer.score_texts(["hello"]), *scorer.score_conversations([conv]),
                *scorer.score_texts(["raw text"])]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines] == ["hello", "3 plus 3 is 6.", "raw text"]
    assert [float(line.split("\t")[0]) for line in lines] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: 1 turns; a conversation needs"),
    ({"prompt": "hi"}, 'line 2 must be {"messages"'),
    ({"text": ""}, "line 2 has an empty text"),
])
def test_bad_input_lines_are_named(trained, tmp_path, capsys, row, message):
    config_file, out = trained
    inputs = write_inputs(tmp_path / "bad.jsonl", [{"text": "fine"}, row])
    assert main(["score", str(config_file), f"adapter_name_or_path={out}", "--file", inputs]) == 2
    assert message in capsys.readouterr().err


def test_the_score_command_needs_inputs_and_a_reward_model(trained, model_dir, capsys):
    config_file, _ = trained
    assert main(["score", str(config_file)]) == 2
    assert "Nothing to score" in capsys.readouterr().err
    assert main(["score", f"model_name_or_path={model_dir}", "template=chatml", "--text", "hi"]) == 2
    assert "was not trained with stage rm" in capsys.readouterr().err
