"""The FastAPI application: OpenAI's models, chat completions and completions endpoints, plus
``/v1/score`` (``tunery.api.scoring``), which a reward model serves instead of generating.

Every request goes through the one shared ``ChatEngine``, whose lock queues
generations, so concurrent requests never interleave. Handlers never block the
event loop: prompts are encoded in worker threads and replies are read from the
engine's text stream in worker threads. A client that goes away (mid-stream, or
while waiting for a whole reply) has its generation cancelled, which frees the
engine for the next request.
"""

import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tunery.api.messages import (
    check_sampling,
    choose_max_new_tokens,
    sampling_overrides,
    stop_strings,
    to_tunery_messages,
    tools_json,
)
from tunery.api.protocol import (
    ApiError,
    CalledFunction,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    ReplyMessage,
    SamplingRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
    error_body,
)
from tunery.api.scoring import SCORE_PATHS, ScoreService
from tunery.api.stops import StoppedStream
from tunery.errors import TuneryError
from tunery.infer.engine import ChatEngine, Reply
from tunery.infer.reward import RewardScorer

logger = logging.getLogger(__name__)

GENERATION_FAILED = "The server failed while generating the reply; see its log."


@dataclass
class Job:
    """One validated generation request, ready to run."""

    id: str
    prompt: list[int]
    overrides: dict
    stops: list[str]
    include_usage: bool
    with_tools: bool = False
    echo: str = ""  # text completions: the prompt, repeated in front of the reply


class ApiService:
    """The endpoints' logic, around one engine and the model name it is served under."""

    def __init__(self, engine: ChatEngine | RewardScorer, model_name: str):  # a scorer: models endpoints only
        self.engine = engine
        self.model_name = model_name

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and reply) the model reads, when its config says."""
        return getattr(getattr(self.engine.model, "config", None), "max_position_embeddings", None)

    # ----- endpoints ----------------------------------------------------------------------------------

    async def list_models(self) -> Response:
        return json_response(ModelList(data=[ModelCard(id=self.model_name)]))

    async def get_model(self, model_id: str) -> Response:
        self.check_model(model_id)
        return json_response(ModelCard(id=self.model_name))

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        check_sampling(body)
        system, messages = to_tunery_messages(body.messages)
        tools = tools_json(body.tools, body.tool_choice)
        prompt = await encode(self.engine.encode_chat, messages, system, tools)
        max_tokens = body.max_completion_tokens or body.max_tokens
        job = self.job("chatcmpl", prompt, body, max_tokens, with_tools=bool(tools))
        if body.stream:
            return EventSourceResponse(self.events(job, self.chat_chunks), sep="\n")
        reader = await self.run_watching_disconnect(job, request)
        return json_response(self.chat_completion(job, reader))

    async def complete(self, body: CompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        check_sampling(body)
        if body.suffix:
            raise ApiError(400, "suffix is not supported by Tunery's API.", param="suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt holds {len(prompts)} prompts; send exactly one.", param="prompt")
        prompt = await encode(self.engine.encode_text, prompts[0])
        job = self.job("cmpl", prompt, body, body.max_tokens, echo=prompts[0] if body.echo else "")
        if body.stream:
            return EventSourceResponse(self.events(job, self.completion_chunks), sep="\n")
        reader = await self.run_watching_disconnect(job, request)
        choice = CompletionChoice(text=job.echo + reader.text, finish_reason=reader.finish_reason)
        return json_response(
            Completion(id=job.id, model=self.model_name, choices=[choice], usage=usage_of(reader.reply()))
        )

    # ----- requests -----------------------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def job(
        self, prefix: str, prompt: list[int], body: SamplingRequest, max_tokens: int | None, **extra
    ) -> Job:
        """The validated generation behind ``body`` (``extra``: Job fields particular to the endpoint)."""
        default = self.engine.config.generation.max_new_tokens
        overrides = sampling_overrides(body)
        overrides["max_new_tokens"] = choose_max_new_tokens(
            max_tokens, len(prompt), default, self.context_length
        )
        return Job(
            id=f"{prefix}-{secrets.token_hex(12)}",
            prompt=prompt,
            overrides=overrides,
            stops=stop_strings(body.stop),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            **extra,
        )

    def start(self, job: Job) -> StoppedStream:
        return StoppedStream(self.engine.stream(job.prompt, **job.overrides), job.stops)

    async def run_watching_disconnect(self, job: Job, request: Request) -> StoppedStream:
        """Generate the whole reply in a worker thread; if the client leaves first, cancel it."""
        reader = self.start(job)
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(close_on_disconnect, request, reader)
                try:
                    await anyio.to_thread.run_sync(reader.read_all, abandon_on_cancel=True)
                except Exception as err:  # raised after the task group, not wrapped in an ExceptionGroup
                    failure = err
                group.cancel_scope.cancel()
        finally:
            reader.stream.close()  # a no-op after a finished reply; cancels one nobody waits for
        if failure is not None:  # answered here: an unhandled error would also drop the connection
            logger.error("Generation failed for %s", job.id, exc_info=failure)
            raise ApiError(500, GENERATION_FAILED, kind="server_error")
        return reader

    # ----- replies ------------------------------------------------------------------------------------

    def chat_completion(self, job: Job, reader: StoppedStream) -> ChatCompletion:
        reply = self.finished_reply(job, reader)
        calls = openai_tool_calls(reply)
        message = ReplyMessage(content=None if calls else reply.text, tool_calls=calls or None)
        choice = ChatChoice(message=message, finish_reason=finish_reason(reply))
        return ChatCompletion(id=job.id, model=self.model_name, choices=[choice], usage=usage_of(reply))

    def finished_reply(self, job: Job, reader: StoppedStream) -> Reply:
        reply = reader.reply()
        return self.engine.attach_tool_calls(reply) if job.with_tools else reply

    async def events(self, job: Job, chunks_of: Callable) -> AsyncIterator[str]:
        """Server-sent events: one JSON chunk each, then ``[DONE]``. The generation ends with the response."""
        reader = self.start(job)
        try:
            async for chunk in chunks_of(job, reader):
                yield chunk.model_dump_json()
            yield "[DONE]"
        except Exception:  # headers are sent: the error goes into the stream, where clients raise it
            logger.exception("Generation failed for %s", job.id)
            yield json.dumps(error_body(GENERATION_FAILED, "server_error"))
        finally:
            reader.stream.close()

    async def chat_chunks(self, job: Job, reader: StoppedStream) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(delta=delta, finish_reason=finish)
            return ChatCompletionChunk(id=job.id, model=self.model_name, choices=[choice])

        yield chunk(Delta(role="assistant", content=""))
        if job.with_tools:  # a tool call is only recognisable once the reply is complete
            await anyio.to_thread.run_sync(reader.read_all, abandon_on_cancel=True)
            reply = self.finished_reply(job, reader)
            if calls := openai_tool_calls(reply):
                deltas = [ToolCallDelta(index=i, **call.model_dump()) for i, call in enumerate(calls)]
                yield chunk(Delta(tool_calls=deltas))
            elif reply.text:
                yield chunk(Delta(content=reply.text))
        else:
            async for piece in iterate_in_thread(reader):
                yield chunk(Delta(content=piece))
            reply = reader.reply()
        yield chunk(Delta(), finish_reason(reply))
        if job.include_usage:
            yield ChatCompletionChunk(id=job.id, model=self.model_name, choices=[], usage=usage_of(reply))

    async def completion_chunks(self, job: Job, reader: StoppedStream) -> AsyncIterator[Completion]:
        def chunk(text: str, finish: str | None = None) -> Completion:
            choice = CompletionChoice(text=text, finish_reason=finish)
            return Completion(id=job.id, model=self.model_name, choices=[choice])

        if job.echo:
            yield chunk(job.echo)
        async for piece in iterate_in_thread(reader):
            yield chunk(piece)
        yield chunk("", reader.finish_reason)
        if job.include_usage:
            yield Completion(id=job.id, model=self.model_name, choices=[], usage=usage_of(reader.reply()))


# ----- helpers ---------------------------------------------------------------------------------------


async def encode(encoder: Callable[..., list[int]], *args) -> list[int]:
    """Tokenize in a worker thread; a template's complaint about the input is the client's 400."""
    try:
        return await run_in_threadpool(encoder, *args)
    except TuneryError as err:
        raise ApiError(400, str(err), param="messages") from None


_DONE = object()


async def iterate_in_thread(iterable: Iterable) -> AsyncIterator:
    """Pull items from a blocking iterator in worker threads.

    When the consumer is cancelled (the client went away), waiting stops at once
    (the thread is abandoned); the caller then closes the engine stream, which
    ends the thread's wait too.
    """
    iterator = iter(iterable)
    while True:
        item = await anyio.to_thread.run_sync(next, iterator, _DONE, abandon_on_cancel=True)
        if item is _DONE:
            return
        yield item


async def close_on_disconnect(request: Request, reader: StoppedStream) -> None:
    """Wait for the client to hang up, then cancel its generation."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    reader.stream.close()


def openai_tool_calls(reply: Reply) -> list[ToolCall]:
    return [
        ToolCall(id=f"call_{secrets.token_hex(12)}", function=CalledFunction(**call))
        for call in reply.tool_calls
    ]


def finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else reply.finish_reason


def usage_of(reply: Reply) -> Usage:
    return Usage.of(reply.prompt_tokens, reply.completion_tokens)


def json_response(model) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


# ----- errors and authentication ---------------------------------------------------------------------


async def api_error_response(_: Request, error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def validation_error_response(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad field."""
    first = error.errors()[0]
    path = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(path) or None
    if first.get("type") == "json_invalid":
        message, param = "The request body is not valid JSON.", None
    elif param is None:  # the body as a whole: not a JSON object (often a missing Content-Type header)
        message = "The request body must be a JSON object, sent with 'Content-Type: application/json'."
    elif first.get("type") == "missing":
        message = f"'{param}' is required."
    else:
        message = f"{param}: {first.get('msg')}." if param else f"{first.get('msg')}."
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


async def http_error_response(request: Request, error: HTTPException) -> JSONResponse:
    message = str(error.detail)
    if error.status_code in (404, 405):
        message = f"{request.method} {request.url.path}: {error.detail}. See /docs for the endpoints."
    return JSONResponse(
        error_body(message, "invalid_request_error"), status_code=error.status_code, headers=error.headers
    )


async def server_error_response(_: Request, error: Exception) -> JSONResponse:
    return JSONResponse(error_body("The server had an error; see its log.", "server_error"), status_code=500)


def digest(key: str) -> bytes:
    """Keys are compared as fixed-length digests, so not even their length leaks through timing."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def api_key_check(api_key: str) -> Callable:
    """A dependency that refuses requests without ``Authorization: Bearer <api_key>``."""
    expected = digest(api_key)

    async def check_api_key(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(digest(token.strip()), expected):
            raise ApiError(
                401,
                "Missing or incorrect API key; send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    return check_api_key


# ----- the application -------------------------------------------------------------------------------


def create_app(engine: ChatEngine | RewardScorer, model_name: str, api_key: str | None = None) -> FastAPI:
    """The API for ``engine`` (a chat model, or a reward model that only scores), answering to
    ``model_name``; ``api_key`` (if set) guards ``/v1``."""
    service = ApiService(engine, model_name)
    scorer = engine if isinstance(engine, RewardScorer) else None
    scoring = ScoreService(scorer, model_name, service.check_model)
    app = FastAPI(title="Tunery", description="OpenAI-compatible API over a Tunery model.")
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_exception_handler(HTTPException, http_error_response)
    app.add_exception_handler(Exception, server_error_response)
    guard = [Depends(api_key_check(api_key))] if api_key else []
    router = APIRouter(prefix="/v1", dependencies=guard)
    router.add_api_route("/models", service.list_models, methods=["GET"])
    router.add_api_route("/models/{model_id}", service.get_model, methods=["GET"])
    generates = scoring.scorer is None
    router.add_api_route("/chat/completions", service.chat if generates else scoring.refuse_generation,
                         methods=["POST"])
    router.add_api_route("/completions", service.complete if generates else scoring.refuse_generation,
                         methods=["POST"])
    for path in SCORE_PATHS:
        router.add_api_route(path, scoring.score, methods=["POST"])
    app.include_router(router)

    @app.get("/health")
    async def health() -> dict:
        """Liveness probe (no API key needed)."""
        return {"status": "ok", "model": model_name}

    return app
