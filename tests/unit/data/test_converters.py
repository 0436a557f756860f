"""alpaca | sharegpt | openai rows -> Conversation, with LLaMA-Factory's semantics."""

import json
from pathlib import Path

import pytest

from tunery.data.conversation import Message, Role
from tunery.data.converters import RowError, to_conversation, to_document
from tunery.data.registry import spec_from_entry

U, A, F, OBS = Role.USER, Role.ASSISTANT, Role.FUNCTION_CALL, Role.OBSERVATION


def spec(**entry):
    return spec_from_entry("test", {"file_name": ".", **entry}, Path("."), "test")


def roles_and_texts(conv):
    return [(m.role, m.content) for m in conv.messages]


def test_alpaca_joins_instruction_and_input_with_a_newline():
    conv = to_conversation({"instruction": "Translate", "input": "Hallo", "output": "Hello"}, spec())
    assert roles_and_texts(conv) == [(U, "Translate\nHallo"), (A, "Hello")]
    conv = to_conversation({"instruction": "Hi", "input": "", "output": "Hey"}, spec())
    assert roles_and_texts(conv) == [(U, "Hi"), (A, "Hey")]


def test_alpaca_history_and_system_columns():
    row = {"q": "third", "a": "3", "h": [["first", "1"], ["second", "2"]], "sys": "Be brief."}
    columns = {"prompt": "q", "response": "a", "history": "h", "system": "sys"}
    conv = to_conversation(row, spec(columns=columns))
    assert roles_and_texts(conv) == [(U, "first"), (A, "1"), (U, "second"), (A, "2"), (U, "third"), (A, "3")]
    assert conv.system == "Be brief."


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "q"}, "response column 'output' is missing"),
        ({"instruction": "q", "output": 3}, "response column 'output' is not text"),
        ({"instruction": ["q"], "output": "a"}, "prompt column 'instruction' holds a list"),
        ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history item 1"),
    ],
)
def test_alpaca_bad_rows_raise_with_a_reason(row, reason):
    columns = {"history": "history"}
    with pytest.raises(RowError, match=reason):
        to_conversation(row, spec(columns=columns))


def test_placeholders_are_kept_verbatim():
    row = {"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."}
    assert to_conversation(row, spec()).messages[1].content == "I am {{name}}, made by {{author}}."


def sharegpt(**extra):
    return spec(formatting="sharegpt", columns={"messages": "conversations", "tools": "tools", **extra})


def test_sharegpt_roles_system_turn_and_tools():
    row = {
        "conversations": [
            {"from": "system", "value": "You are a bot."},
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
            {"from": "observation", "value": '{"t": 20}'},
            {"from": "gpt", "value": "20 degrees"},
        ],
        "tools": '[{"name": "w"}]',
    }
    conv = to_conversation(row, sharegpt())
    assert conv.system == "You are a bot." and conv.tools == '[{"name": "w"}]'
    assert [m.role for m in conv.messages] == [U, F, OBS, A]


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([("gpt", "a"), ("human", "b")], "turn 1 has role 'gpt' where a user/observation turn"),
        ([("human", "a"), ("human", "b")], "turn 2 has role 'human' where a assistant/function_call"),
        ([("human", "a")], "1 turns"),
        ([], "0 turns"),
        ([("human", "a"), ("robot", "b")], "turn 2 has role 'robot'"),
    ],
)
def test_sharegpt_alternation_is_validated(turns, reason):
    row = {"conversations": [{"from": r, "value": v} for r, v in turns]}
    with pytest.raises(RowError, match=reason):
        to_conversation(row, sharegpt())


def test_sharegpt_custom_tags_and_system_column():
    entry = {"formatting": "sharegpt", "columns": {"messages": "msgs", "system": "sys"},
             "tags": {"role_tag": "r", "content_tag": "c", "user_tag": "u", "assistant_tag": "a"}}
    row = {"msgs": [{"r": "u", "c": "hi"}, {"r": "a", "c": "yo"}], "sys": "S"}
    conv = to_conversation(row, spec(**entry))
    assert roles_and_texts(conv) == [(U, "hi"), (A, "yo")] and conv.system == "S"


def test_sharegpt_ranking_row_keeps_chosen_and_rejected_apart():
    row = {"conversations": [{"from": "human", "value": "q"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    ranking = spec(formatting="sharegpt", ranking=True,
                   columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})
    conv = to_conversation(row, ranking)
    assert roles_and_texts(conv) == [(U, "q")]
    assert conv.chosen == Message(A, "good") and conv.rejected == Message(A, "bad")


def test_ranking_rows_must_end_with_a_prompt_and_have_turn_objects():
    ranking = spec(formatting="sharegpt", ranking=True,
                   columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})
    two_turns = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                 "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}}
    with pytest.raises(RowError, match="must end with a user turn"):
        to_conversation(two_turns, ranking)
    with pytest.raises(RowError, match="one turn object"):
        to_conversation({"conversations": [{"from": "human", "value": "q"}], "chosen": "x", "rejected": "y"},
                        ranking)


def test_alpaca_ranking_uses_text_candidates():
    row = {"instruction": "q", "chosen": "good", "rejected": "bad"}
    conv = to_conversation(row, spec(ranking=True, columns={"chosen": "chosen", "rejected": "rejected"}))
    assert roles_and_texts(conv) == [(U, "q")]
    assert (conv.chosen.content, conv.rejected.content) == ("good", "bad")


def test_kto_tag_is_kept_in_extra():
    row = {"instruction": "q", "output": "a", "label": True}
    assert to_conversation(row, spec(columns={"kto_tag": "label"})).extra == {"kto_tag": True}


def test_openai_messages_tool_calls_and_tool_results():
    row = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "2 cities?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": '{"city": "Oslo"}'}},
                {"type": "function", "function": {"name": "w", "arguments": {"city": "Rome"}}},
            ]},
            {"role": "tool", "content": "3C"},
            {"role": "tool", "content": "18C"},
            {"role": "assistant", "content": "Oslo 3C, Rome 18C"},
        ],
        "tools": [{"type": "function", "function": {"name": "w"}}],
    }
    conv = to_conversation(row, spec(formatting="openai", columns={"tools": "tools"}))
    assert conv.system == "sys"
    assert [m.role for m in conv.messages] == [U, F, OBS, A]
    assert json.loads(conv.messages[1].content) == [
        {"name": "w", "arguments": {"city": "Oslo"}}, {"name": "w", "arguments": {"city": "Rome"}}]
    assert conv.messages[2].content == "3C\n18C"
    assert json.loads(conv.tools) == row["tools"]


def test_openai_single_tool_call_is_one_object():
    row = {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]}
    conv = to_conversation(row, spec(formatting="openai"))
    assert json.loads(conv.messages[1].content) == {"name": "f", "arguments": {}}


def test_documents_from_alpaca_and_sharegpt_rows():
    assert to_document({"text": "hello"}, spec(columns={"prompt": "text"})).text == "hello"
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "first"}]}
    assert to_document(row, sharegpt()).text == "first"
    with pytest.raises(RowError, match="empty text"):
        to_document({"text": "  "}, spec(columns={"prompt": "text"}))


def test_alpaca_row_with_an_empty_response_is_skipped_with_a_reason(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    spec = spec_from_entry("d", {"file_name": "d.json"}, tmp_path, "test")
    with pytest.raises(RowError, match="response column 'output' is empty"):
        to_conversation({"instruction": "Say hi", "output": "  "}, spec)


def test_alpaca_row_without_the_prompt_column_is_skipped(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    spec = spec_from_entry("d", {"file_name": "d.json", "columns": {"prompt": "q"}}, tmp_path, "test")
    with pytest.raises(RowError, match="prompt column 'q' is missing"):
        to_conversation({"question": "Say hi", "output": "hi"}, spec)
    assert to_conversation({"q": "", "input": "Say hi", "output": "hi"}, spec).messages[0].content == "Say hi"
