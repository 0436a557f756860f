"""The chat engine on a tiny saved model: streaming, beam search, and failures that surface."""

import pytest
from train_tiny import save_tiny_model

from tunery.config import load_config
from tunery.data.conversation import Conversation, Message, Role
from tunery.infer.engine import ChatEngine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    config = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "do_train=false",
                                "do_sample=false", "max_new_tokens=6"])
    return ChatEngine(config)


HELLO = [Message(Role.USER, "hello")]


def test_streamed_pieces_join_to_the_greedy_reply(engine):
    pieces = list(engine.stream_chat(HELLO))
    assert pieces, "a reply streams at least one piece"
    assert "".join(pieces) == engine.chat(HELLO)


def test_prompt_uses_the_template(engine):
    prompt = engine.template.encode_prompt(engine.tokenizer, Conversation(messages=HELLO))
    text = engine.tokenizer.decode(prompt)
    assert text.endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_beam_search_returns_the_whole_reply_at_once(engine):
    pieces = list(engine.stream_chat(HELLO, num_beams=2))
    assert len(pieces) == 1


def test_a_generation_error_is_raised_not_left_hanging(engine, monkeypatch):
    def broken_generate(**_):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(engine.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="the model broke"):
        list(engine.stream_chat(HELLO))
