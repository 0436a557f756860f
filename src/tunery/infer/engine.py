"""The inference engine: a base model plus adapters, the training chat template, streaming.

Every consumer (terminal chat, batch prediction, the API, the web UI) goes
through ``ChatEngine`` so that a model is prompted exactly the way it was
trained: same template, same default system prompt, same stop words.
"""

from collections.abc import Iterator
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from tunery.config import RunConfig
from tunery.config.schema import GenerationArgs
from tunery.data.conversation import Conversation, Message
from tunery.model.load import load_model
from tunery.train.run import load_tokenizer_and_template


class ChatEngine:
    """Loads the model once; answers conversations with streamed text."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.tokenizer, self.template = load_tokenizer_and_template(config)
        self.model = load_model(config, self.tokenizer, for_training=False)
        self.model.eval()

    def stream_chat(
        self, messages: list[Message], system: str = "", tools: str = "", **overrides
    ) -> Iterator[str]:
        """Yield the reply piece by piece as the model writes it."""
        settings = self.settings(overrides)
        prompt = self.template.encode_prompt(
            self.tokenizer, Conversation(messages=messages, system=system, tools=tools)
        )
        kwargs = self.generate_kwargs(prompt, settings)
        if settings.num_beams > 1:  # beam search only knows its answer at the end: one piece
            yield self.generate_text(kwargs, len(prompt), settings.skip_special_tokens)
            return
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=settings.skip_special_tokens
        )
        failure: list[BaseException] = []
        kwargs["streamer"] = streamer
        worker = Thread(target=self.generate_into, args=(kwargs, failure), daemon=True)
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()
        if failure:  # surfaced here, in the caller's thread, instead of a reader waiting forever
            raise failure[0]

    def chat(self, messages: list[Message], system: str = "", tools: str = "", **overrides) -> str:
        return "".join(self.stream_chat(messages, system, tools, **overrides))

    def settings(self, overrides: dict) -> GenerationArgs:
        return self.config.generation.model_copy(update=overrides)

    def generate_kwargs(self, prompt: list[int], settings: GenerationArgs) -> dict:
        sample = settings.do_sample and settings.temperature > 0
        kwargs = {
            "input_ids": torch.tensor([prompt], device=self.model.device),
            "attention_mask": torch.ones(1, len(prompt), dtype=torch.long, device=self.model.device),
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": sample,
            "num_beams": settings.num_beams,
            "repetition_penalty": settings.repetition_penalty,
            "eos_token_id": self.template.get_stop_token_ids(self.tokenizer),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sample:
            kwargs |= {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
        return kwargs

    @torch.inference_mode()
    def generate_text(self, kwargs: dict, prompt_length: int, skip_special_tokens: bool) -> str:
        output = self.model.generate(**kwargs)
        return self.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=skip_special_tokens)

    @torch.inference_mode()
    def generate_into(self, kwargs: dict, failure: list[BaseException]) -> None:
        """Run generation in a worker thread; on error, record it and release the streamer."""
        try:
            self.model.generate(**kwargs)
        except BaseException as err:
            failure.append(err)
            kwargs["streamer"].end()
