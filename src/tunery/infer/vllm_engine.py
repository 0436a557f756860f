"""The vLLM backend (``infer_backend: vllm``): the same engine surface, generation by vLLM.

vLLM batches and pages the KV cache on NVIDIA GPUs, so prediction and the API
serve many more requests per second than transformers' ``generate``. Prompts
are still rendered by Tunery's template (vLLM receives token ids), so replies
match the other backend's prompting exactly. One LoRA adapter is applied per
request through vLLM's LoRA support; several adapters must be merged first
(``tunery export``). Replies arrive whole: a stream from this backend yields the
reply as one piece. Without vLLM or a GPU the user gets a sentence saying what
is missing, never an import traceback.
"""

import gc
import importlib.util
import threading

import torch

from tunery.config import RunConfig
from tunery.config.schema import GenerationArgs
from tunery.errors import ConfigError
from tunery.infer.engine import ChatEngine, Reply, TextStream
from tunery.model.load import resolve_model


def check_vllm_usable(config: RunConfig) -> None:
    """Raise a ConfigError naming what is missing for the vLLM backend."""
    fallback = "or use `infer_backend: huggingface` (works everywhere)."
    if importlib.util.find_spec("vllm") is None:
        missing = "the vllm package: pip install 'tunery[vllm]'"
        raise ConfigError(f"infer_backend: vllm needs {missing}, {fallback}")
    if not torch.cuda.is_available() or config.training.use_cpu:
        raise ConfigError(f"infer_backend: vllm needs an NVIDIA GPU and none is available here; {fallback}")
    if len(config.model.adapter_name_or_path or []) > 1:
        raise ConfigError(
            "infer_backend: vllm applies one LoRA adapter; merge the others into the model first with "
            "`tunery export`, then name the merged folder as model_name_or_path."
        )


class VllmEngine(ChatEngine):
    """ChatEngine whose weights live in a ``vllm.LLM`` instead of a transformers model."""

    def __init__(self, config: RunConfig):
        check_vllm_usable(config)
        super().__init__(config)

    def load_weights(self):
        from vllm import LLM

        adapters = self.config.model.adapter_name_or_path or []
        inference = self.config.inference
        dtype = inference.infer_dtype if inference.infer_dtype != "auto" else "auto"
        return LLM(
            model=str(resolve_model(self.config.model.model_name_or_path).path),
            dtype=dtype,
            max_model_len=inference.vllm_maxlen,
            gpu_memory_utilization=inference.vllm_gpu_util,
            enforce_eager=inference.vllm_enforce_eager,
            trust_remote_code=self.config.model.trust_remote_code,
            enable_lora=bool(adapters),
        )

    def lora_request(self):
        adapters = self.config.model.adapter_name_or_path or []
        if not adapters:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("default", 1, adapters[0])

    def sampling_params(self, settings: GenerationArgs):
        from vllm import SamplingParams

        if settings.num_beams > 1:
            raise ConfigError("num_beams > 1 is not available with infer_backend: vllm; use huggingface.")
        sample = settings.do_sample and settings.temperature > 0
        return SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if sample else 0.0,
            top_p=settings.top_p if sample else 1.0,
            top_k=settings.top_k if sample and settings.top_k > 0 else -1,
            repetition_penalty=settings.repetition_penalty,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=settings.skip_special_tokens,
        )

    def generate_ids(self, prompts: list[list[int]], settings: GenerationArgs) -> list[list[int]]:
        """The generated token ids of each prompt (vLLM schedules the batch itself)."""
        from vllm.inputs import TokensPrompt

        with self.generation_lock:
            outputs = self.model.generate(
                [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts],
                self.sampling_params(settings), lora_request=self.lora_request(), use_tqdm=False,
            )
        return [list(output.outputs[0].token_ids) for output in outputs]

    def generate_batch(self, prompts: list[list[int]], **overrides) -> list[Reply]:
        settings = self.settings(overrides)
        return [self.make_reply(ids, len(prompt), settings)
                for ids, prompt in zip(self.generate_ids(prompts, settings), prompts, strict=True)]

    def stream(self, prompt: list[int], **overrides) -> TextStream:
        """The whole reply as one piece, generated in a worker thread like the other backend."""
        settings = self.settings(overrides)
        stream = TextStream(self, len(prompt), settings)
        stream.seen_prompt = True  # no prompt echo comes first, unlike transformers' streamer protocol
        work = (prompt, settings, stream)
        threading.Thread(target=self.generate_whole_into, args=work, daemon=True).start()
        return stream

    def generate_whole_into(self, prompt: list[int], settings: GenerationArgs, stream: TextStream) -> None:
        stream.feed(lambda: stream.put(torch.tensor(self.generate_ids([prompt], settings)[0])))

    def close(self) -> None:
        with self.generation_lock:
            del self.model
            gc.collect()
            torch.cuda.empty_cache()
