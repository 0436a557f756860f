"""The inference engine: a base model plus adapters, the training chat template, generation.

Every consumer (terminal chat, batch prediction, the API, the web UI) goes
through ``ChatEngine`` so that a model is prompted exactly the way it was
trained: same template, same default system prompt, same stop words.

Generation comes in two shapes:

- ``stream(prompt)`` yields text as the model writes it, from a worker thread;
  closing the stream early (a client that went away) stops the generation.
- ``generate_batch(prompts)`` runs several prompts through one ``generate``
  call with left padding, which is how prediction gets its throughput
  (``model.generation``, which RL rollouts share).

One lock serialises generations, so concurrent callers (API requests) queue
instead of interleaving their tokens. ``close()`` releases the weights so an
application can load and unload models repeatedly without growing.
"""

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tunery.config import RunConfig
from tunery.config.schema import GenerationArgs
from tunery.data.conversation import Conversation, Message
from tunery.model.generation import cut_at_stop, generate_batch, generate_kwargs
from tunery.model.load import load_model
from tunery.train.memory import release_free_memory
from tunery.train.run import load_tokenizer_and_template

logger = logging.getLogger(__name__)


@dataclass
class Reply:
    """One finished generation, with what an API response needs to report."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop word or eos) or "length" (max_new_tokens reached)
    tool_calls: list[dict] = field(default_factory=list)  # [{"name", "arguments" (JSON text)}]


class ChatEngine:
    """Loads the model once; answers conversations, streamed or in batches."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.tokenizer, self.template = load_tokenizer_and_template(config)
        self.stop_ids = self.template.get_stop_token_ids(self.tokenizer)
        self.generation_lock = threading.Lock()
        self.model = self.load_weights()

    def load_weights(self):
        """The base model with the configured adapters merged in (another backend loads its own)."""
        return load_model(self.config, self.tokenizer, for_training=False)

    # ----- prompts -----

    def encode_chat(self, messages: list[Message], system: str = "", tools: str = "") -> list[int]:
        """Token ids of a conversation up to where the assistant starts answering."""
        return self.template.encode_prompt(
            self.tokenizer, Conversation(messages=messages, system=system, tools=tools)
        )

    def encode_text(self, text: str) -> list[int]:
        """Token ids of raw text (no chat template), for plain completions."""
        return self.tokenizer.encode(text, add_special_tokens=True)

    # ----- generation -----

    def stream_chat(
        self, messages: list[Message], system: str = "", tools: str = "", **overrides
    ) -> "TextStream":
        """The reply to a conversation as a stream of text pieces."""
        return self.stream(self.encode_chat(messages, system, tools), **overrides)

    def chat(self, messages: list[Message], system: str = "", tools: str = "", **overrides) -> str:
        return self.reply(messages, system, tools, **overrides).text

    def reply(self, messages: list[Message], system: str = "", tools: str = "", **overrides) -> Reply:
        """The whole reply with token counts, finish reason and parsed tool calls."""
        reply = self.generate_batch([self.encode_chat(messages, system, tools)], **overrides)[0]
        if tools:
            self.attach_tool_calls(reply)
        return reply

    def attach_tool_calls(self, reply: Reply) -> Reply:
        """Move tool calls written in the template's tool format from the text to ``tool_calls``."""
        found = self.template.extract_tool_calls(reply.text)
        if not isinstance(found, str):
            reply.tool_calls, reply.text = found, ""
        return reply

    def stream(self, prompt: list[int], **overrides) -> "TextStream":
        """Start generating for ``prompt`` in a worker thread; iterate the result for text."""
        settings = self.settings(overrides)
        stream = TextStream(self, len(prompt), settings)
        kwargs = self.generate_kwargs([prompt], settings)
        kwargs["stopping_criteria"] = StoppingCriteriaList([CancelOnEvent(stream.cancelled)])
        if settings.num_beams == 1:
            kwargs["streamer"] = stream
        else:  # beam search only knows its answer at the end: the stream gets it in one piece
            stream.seen_prompt = True
        threading.Thread(target=self.generate_into, args=(kwargs, stream), daemon=True).start()
        return stream

    def generate_batch(self, prompts: list[list[int]], **overrides) -> list[Reply]:
        """Generate for several prompts at once (left padded); one Reply per prompt, in order."""
        settings = self.settings(overrides)
        with self.generation_lock:
            outputs = generate_batch(self.model, prompts, settings, self.stop_ids, self.pad_id)
        return [self.make_reply(generated, len(prompt), settings)
                for generated, prompt in zip(outputs, prompts, strict=True)]

    def make_reply(self, generated: list[int], prompt_tokens: int, settings: GenerationArgs) -> Reply:
        """Cut generated ids at the first stop token; decode; say why generation ended."""
        kept, stopped = cut_at_stop(generated, self.stop_ids)
        return Reply(
            text=self.decode(kept, settings.skip_special_tokens),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept) + stopped,
            finish_reason="stop" if stopped else "length",
        )

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def settings(self, overrides: dict) -> GenerationArgs:
        """The config's generation settings with per-call overrides (validated)."""
        merged = self.config.generation.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        return GenerationArgs(**merged)

    def generate_kwargs(self, prompts: list[list[int]], settings: GenerationArgs) -> dict:
        return generate_kwargs(prompts, settings, self.stop_ids, self.pad_id, self.model.device)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @torch.inference_mode()
    def generate_into(self, kwargs: dict, stream: "TextStream") -> None:
        """Worker thread: generate under the lock, feeding ``stream``."""
        stream.feed(lambda: self.generate_locked(kwargs, stream))

    def generate_locked(self, kwargs: dict, stream: "TextStream") -> None:
        with self.generation_lock:
            if stream.cancelled.is_set():  # the reader left while this request queued
                return
            output = self.model.generate(**kwargs)
            if "streamer" not in kwargs:
                stream.put(output[0, kwargs["input_ids"].shape[1]:])

    # ----- lifetime -----

    def close(self) -> None:
        """Free the weights (the web UI loads and unloads models repeatedly)."""
        with self.generation_lock:
            release_model(self)

    def __enter__(self) -> "ChatEngine":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def release_model(owner: object) -> None:
    """Drop ``owner.model`` and hand its memory back: collect it, trim the heap, empty the CUDA cache."""
    device = owner.model.device
    del owner.model
    gc.collect()
    release_free_memory(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def model_label(config: RunConfig) -> str:
    """What users call the loaded model: the last adapter's folder name, else the model's name."""
    adapters = config.model.adapter_name_or_path
    if adapters:
        return Path(adapters[-1]).name
    path = Path(config.model.model_name_or_path)
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def create_engine(config: RunConfig) -> ChatEngine:
    """The engine ``infer_backend`` asks for: transformers (everywhere) or vLLM (GPU)."""
    if config.inference.infer_backend == "vllm":
        from tunery.infer.vllm_engine import VllmEngine

        return VllmEngine(config)
    return ChatEngine(config)


class CancelOnEvent(StoppingCriteria):
    """Stops generation as soon as ``event`` is set (the reader closed the stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        stop = self.event.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class TextStream(BaseStreamer):
    """Receives token ids from ``generate`` (a streamer) and hands out text pieces to one reader.

    Iterating yields each newly decodable piece of the reply; afterwards
    ``completion_tokens`` and ``finish_reason`` describe how it ended. Leaving the
    loop early (or calling ``close``) cancels the generation.
    """

    def __init__(self, engine: ChatEngine, prompt_tokens: int, settings: GenerationArgs):
        self.engine = engine
        self.settings = settings
        self.prompt_tokens = prompt_tokens
        self.generated: list[int] = []
        self.stopped = False
        self.seen_prompt = False
        self.cancelled = threading.Event()
        self.pieces: Queue = Queue()
        self.failure: BaseException | None = None
        self.emitted = ""

    # --- the generate() side ---

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate() first passes the prompt itself
            self.seen_prompt = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                return
            if token in self.engine.stop_ids:
                self.stopped = True
            else:
                self.generated.append(token)
        self.emit_new_text(final=False)

    def end(self) -> None:
        if not self.cancelled.is_set() or self.generated:
            self.emit_new_text(final=True)
        self.pieces.put(None)

    def feed(self, produce: Callable[[], None]) -> None:
        """Run ``produce`` (which calls ``put``) in a worker; an error reaches the reader, never lost."""
        try:
            if not self.cancelled.is_set():
                produce()
        except BaseException as err:
            self.failure = err
        finally:
            self.end()

    def emit_new_text(self, final: bool) -> None:
        """Queue the text decoded since the last piece, holding back a half-decoded character."""
        text = self.engine.decode(self.generated, self.settings.skip_special_tokens)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > len(self.emitted):
            self.pieces.put(text[len(self.emitted):])
            self.emitted = text

    # --- the reader side ---

    def __iter__(self) -> Iterator[str]:
        try:
            while (piece := self.pieces.get()) is not None:
                if piece:
                    yield piece
            if self.failure is not None:  # surfaced in the reader's thread, not left hanging
                raise self.failure
        finally:
            self.cancelled.set()

    def close(self) -> None:
        self.cancelled.set()

    @property
    def completion_tokens(self) -> int:
        return len(self.generated) + self.stopped

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"

    @property
    def text(self) -> str:
        return self.emitted

