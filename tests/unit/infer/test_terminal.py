"""The terminal chat loop: streaming, history, `clear` and `exit`."""

from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.infer.terminal import chat_in_terminal


class EchoEngine:
    """Replies in two streamed pieces and records the history it was given."""

    def __init__(self):
        self.seen: list[list[Message]] = []

    def stream_chat(self, messages, system="", tools=""):
        self.seen.append(list(messages))
        yield "you said: "
        yield messages[-1].content


def run(lines: list[str], system: str | None = None) -> tuple[EchoEngine, str]:
    engine, written, answers = EchoEngine(), [], iter(lines)

    def read(prompt: str) -> str:
        written.append(prompt)
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    overrides = ["do_train=false"] + ([f"default_system={system}"] if system else [])
    chat_in_terminal(load_config(None, overrides), read=read, write=written.append, engine=engine)
    return engine, "".join(written)


def test_replies_stream_and_history_accumulates():
    engine, screen = run(["hello", "again", "exit"])
    assert "Assistant: you said: hello\n" in screen
    assert [m.content for m in engine.seen[1]] == ["hello", "you said: hello", "again"]
    assert [m.role for m in engine.seen[1]] == [Role.USER, Role.ASSISTANT, Role.USER]


def test_clear_forgets_the_history():
    engine, screen = run(["hello", "clear", "fresh", "exit"])
    assert "History cleared." in screen
    assert [m.content for m in engine.seen[1]] == ["fresh"]


def test_exit_and_end_of_input_stop_the_loop():
    engine, _ = run(["exit", "never read"])
    assert engine.seen == []
    engine, _ = run(["one"])  # input ends without `exit`
    assert len(engine.seen) == 1


def test_blank_lines_are_ignored():
    engine, _ = run(["", "   ", "hi", "exit"])
    assert len(engine.seen) == 1
