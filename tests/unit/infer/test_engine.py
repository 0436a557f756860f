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


def test_a_batch_gives_each_prompt_the_reply_it_gets_alone(engine):
    questions = ("hi", "a much longer question here")
    prompts = [engine.encode_chat([Message(Role.USER, text)]) for text in questions]
    batched = engine.generate_batch(prompts)
    alone = [engine.generate_batch([prompt])[0] for prompt in prompts]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.prompt_tokens for r in batched] == [len(p) for p in prompts]


def test_token_counts_and_finish_reason(engine):
    reply = engine.reply(HELLO, max_new_tokens=3)
    assert reply.completion_tokens <= 3
    assert reply.finish_reason in ("stop", "length")
    if reply.finish_reason == "length":
        assert reply.completion_tokens == 3
    stream = engine.stream_chat(HELLO, max_new_tokens=3)
    assert "".join(stream) == reply.text
    assert (stream.completion_tokens, stream.finish_reason) == (reply.completion_tokens, reply.finish_reason)


def test_a_stop_token_ends_the_reply_and_is_not_shown(engine):
    reply = engine.make_reply([65, 66, engine.stop_ids[0], 67], prompt_tokens=4, settings=engine.settings({}))
    assert reply.text == engine.tokenizer.decode([65, 66])
    assert (reply.completion_tokens, reply.finish_reason) == (3, "stop")


def test_closing_a_stream_stops_the_generation_and_frees_the_engine(engine, monkeypatch):
    monkeypatch.setattr(engine, "stop_ids", [10**6])  # no stop token: only cancelling ends it early
    stream = engine.stream_chat(HELLO, max_new_tokens=200)
    first = next(iter(stream))
    assert first
    stream.close()
    assert engine.generation_lock.acquire(timeout=10), "the cancelled generation released the engine"
    engine.generation_lock.release()
    assert stream.completion_tokens < 200


def test_concurrent_streams_queue_instead_of_interleaving(engine):
    from concurrent.futures import ThreadPoolExecutor

    questions = [[Message(Role.USER, f"question {i}")] for i in range(4)]
    expected = [engine.chat(q) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: "".join(engine.stream_chat(q)), questions))
    assert got == expected


def test_settings_reject_bad_values(engine):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        engine.settings({"top_p": 2.0})


def test_closing_an_engine_frees_its_model(tmp_path):
    import gc
    import weakref

    folder = save_tiny_model(tmp_path / "model")
    config = load_config(None, [f"model_name_or_path={folder}", "template=chatml", "max_new_tokens=2"])
    for _ in range(3):  # the web UI loads and unloads repeatedly
        engine = ChatEngine(config)
        engine.chat(HELLO)
        model = weakref.ref(engine.model)
        engine.close()
        gc.collect()
        assert model() is None, "nothing keeps the unloaded weights alive"


def test_the_vllm_backend_without_vllm_or_a_gpu_is_a_clear_error():
    from tunery.errors import ConfigError
    from tunery.infer.engine import create_engine

    config = load_config(None, ["infer_backend=vllm"])
    with pytest.raises(ConfigError, match=r"infer_backend: vllm needs .*infer_backend: huggingface"):
        create_engine(config)
