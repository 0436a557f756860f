"""The OpenAI wire format Tunery speaks: request and response bodies as pydantic models.

Requests accept what the official clients send. Fields Tunery has no use for
(``user``, ``seed``, ``presence_penalty``, ...) are ignored, as other
OpenAI-compatible servers do; fields whose meaning Tunery cannot honour
(``n`` > 1, ``logprobs``) are rejected by the app with a 400 that says so.
Responses carry the fields the official clients read, in OpenAI's shapes.
"""

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# ----- requests -------------------------------------------------------------------------------------


class Lenient(BaseModel):
    """A request part: unknown fields are ignored (clients add new optional fields all the time)."""

    model_config = ConfigDict(extra="ignore")


class FunctionSpec(Lenient):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(Lenient):
    type: Literal["function"] = "function"
    function: FunctionSpec


class CalledFunction(Lenient):
    name: str
    arguments: str  # JSON text, as OpenAI carries it


class ToolCall(Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ContentPart(Lenient):
    type: str
    text: str | None = None


class ChatMessage(Lenient):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(Lenient):
    include_usage: bool = False


class SamplingRequest(Lenient):
    """What chat and text completions share: the model, sampling, length, stop strings, streaming."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage]
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)  # newer clients' name for max_tokens
    logprobs: bool | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None


class ScoreRequest(Lenient):
    """LLaMA-Factory's ScoreEvaluationRequest (raw ``messages`` texts), or chat ``conversations``
    each ending with the assistant answer to score."""

    model: str
    messages: list[str] | None = None
    conversations: list[list[ChatMessage]] | None = None
    max_length: int | None = Field(None, ge=1)


# ----- responses ------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(ToolCall):
    index: int


class Delta(BaseModel):
    """The part of the reply one stream chunk adds."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def only_what_changed(self, handler) -> dict:
        """OpenAI's deltas omit the fields a chunk does not change."""
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    """A text completion, or (``usage`` None until the last one) one chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "tunery"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ScoreResponse(BaseModel):
    """LLaMA-Factory's ScoreEvaluationResponse: one reward per input, in order."""

    id: str
    object: Literal["score.evaluation"] = "score.evaluation"
    model: str
    scores: list[float]


# ----- errors ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses, answered as ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",  # OpenAI's error "type"
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
