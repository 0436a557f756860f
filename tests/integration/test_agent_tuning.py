"""Agent (tool-use) tuning on the real built-in SmolLM2-135M-Instruct.

LLaMA-Factory's glaive tool-call sample trains unchanged; then examples/agent_sft.yaml
(a short LoRA run on the built-in ``agent_demo`` data, calls written in smollm2's own
``default`` tool format) teaches the model to call the right tool: for requests it never saw,
the chat engine returns parsed ``tool_calls`` and the OpenAI-compatible API answers
with ``tool_calls`` and ``finish_reason: "tool_calls"`` (official ``openai`` client,
app served in-process). Decoding is greedy, so the outcome is deterministic.
"""

import json
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.config import load_config
from tunery.data.conversation import Message, Role
from tunery.data.encode import IGNORE_INDEX
from tunery.data.loader import read_rows
from tunery.data.pipeline import prepare_data
from tunery.data.registry import BUILTIN_DIR, resolve_dataset
from tunery.infer.engine import ChatEngine
from tunery.train.run import load_tokenizer_and_template, run_training

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT.parent / "shared" / "peer-data"
TOOLS = json.loads((BUILTIN_DIR / "agent_demo.json").read_text(encoding="utf-8"))[0]["tools"]
# requests unlike any training row: cities, amounts, phrases and wordings the data never uses
HELD_OUT = [
    ("Could you check the weather in Nairobi for me?", "get_weather", {"city": "Nairobi"}),
    ("How many Swiss francs do I get for 80 euros?", "convert_currency",
     {"amount": 80, "from_currency": "EUR", "to_currency": "CHF"}),
    ("Translate 'where is my hotel?' into German.", "translate_text", {"target_language": "German"}),
    ("Is it snowing in Montreal right now?", "get_weather", {"city": "Montreal"}),
    ("What are 45 British pounds in Canadian dollars?", "convert_currency",
     {"amount": 45, "from_currency": "GBP", "to_currency": "CAD"}),
]


def chat_config(adapter: Path):
    return load_config(None, ["model_name_or_path=smollm2-135m-instruct", f"adapter_name_or_path={adapter}",
                              "template=smollm2", "do_train=false", "do_sample=false",
                              "max_new_tokens=64"])


@pytest.fixture(scope="module")
def agent_adapter(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agent") / "adapter"
    run_training(load_config(str(ROOT / "examples" / "agent_sft.yaml"), [f"output_dir={out}"]))
    return out


@pytest.fixture(scope="module")
def engine(agent_adapter):
    engine = ChatEngine(chat_config(agent_adapter))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def held_out(engine) -> list[tuple[str, bool, object]]:
    """(prompt, right?, reply) for each held-out request, greedy."""
    results = []
    for prompt, name, arguments in HELD_OUT:
        reply = engine.reply([Message(Role.USER, prompt)], tools=TOOLS)
        results.append((prompt, is_right(reply.tool_calls, name, arguments), reply))
    return results


def is_right(calls: list[dict], name: str, arguments: dict) -> bool:
    if len(calls) != 1 or calls[0]["name"] != name:
        return False
    got = json.loads(calls[0]["arguments"])  # arguments are JSON text, as the OpenAI API carries them
    return all(got.get(key) == value for key, value in arguments.items())


def test_glaive_toolcall_sample_trains_unchanged_with_tools_in_the_system_turn():
    config = load_config(None, ["model_name_or_path=smollm2-135m-instruct", "template=smollm2",
                                "tool_format=qwen", "dataset=glaive_toolcall_en_demo", f"dataset_dir={PEER}",
                                "cutoff_len=2048", "stage=sft"])
    tokenizer, template = load_tokenizer_and_template(config)
    prepared = prepare_data(config, tokenizer, template)
    assert [(d.rows, d.valid, d.skipped) for d in prepared.report.datasets] == [(300, 300, 0)]
    rows = [row for _, row in read_rows(resolve_dataset("glaive_toolcall_en_demo", str(PEER)).path)]
    with_calls = 0
    for row, ids, labels in zip(rows, prepared.train["input_ids"], prepared.train["labels"], strict=True):
        system_turn = tokenizer.decode(ids).split("<|im_start|>user\n")[0]
        assert system_turn.startswith("<|im_start|>system\n")
        row_tools = json.loads(row["tools"])  # "[]" in 109 rows: plain chats, no tool text
        assert ("<tools>" in system_turn) == bool(row_tools)
        assert all(f'"name": "{tool["name"]}"' in system_turn for tool in row_tools)
        learned = tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
        assert "<tools>" not in learned
        with_calls += "<tool_call>\n{" in learned  # the function-call turns are learned
    assert with_calls == sum(any(m["from"] == "function_call" for m in row["conversations"]) for row in rows)
    assert with_calls > 100


def test_tuned_model_calls_the_right_tool_for_most_unseen_requests(held_out):
    report = [(prompt, reply.text, reply.tool_calls) for prompt, _, reply in held_out]
    assert sum(right for _, right, _ in held_out) >= 3, report  # a majority of the 5
    assert all(reply.text == "" for _, right, reply in held_out if right)  # the call left the text


def test_api_returns_openai_tool_calls(engine, held_out):
    # a request the engine answered with the right call: the API renders the same prompt, greedy
    right_cases = [case for case, (_, right, _) in zip(HELD_OUT, held_out, strict=True) if right]
    assert right_cases, "no held-out request got the right call"
    prompt, name, arguments = right_cases[0]
    tools = [{"type": "function", "function": tool} for tool in json.loads(TOOLS)]
    with TestClient(create_app(engine, "agent")) as http:
        # the official client, speaking HTTP to the app in-process (TestClient is an httpx.Client)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="-", http_client=http, max_retries=0)
        response = client.chat.completions.create(
            model="agent", messages=[{"role": "user", "content": prompt}], tools=tools, temperature=0
        )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert is_right([{"name": call.function.name, "arguments": call.function.arguments}], name, arguments)
