"""The typed run configuration.

A run is described by one ``RunConfig`` made of sections. Every field name is
the flat key LLaMA-Factory users already write (``lora_rank``, ``cutoff_len``,
...), so a flat YAML maps onto sections by field name alone (see
``config.load``). Field descriptions feed ``--help``, the docs and the web UI.
Cross-field checks live on the section that owns the fields.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunery.config.architecture import ArchitectureArgs
from tunery.config.methods import MethodArgs
from tunery.config.quantization import QuantizationArgs
from tunery.config.rl import RLArgs
from tunery.config.section import Section, split_names


class ModelArgs(Section):
    model_name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Local Hugging Face model directory, a .gguf file, or a built-in alias "
        "(see `tunery env`).",
    )
    adapter_name_or_path: list[str] | None = Field(
        None, description="One or more LoRA adapter directories to load on top of the model."
    )
    trust_remote_code: bool = Field(
        False, description="Run the model's own Python code (needed by Baichuan, ChatGLM, ...)."
    )
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "eager"] = Field(
        "auto", description="Attention kernel: auto picks SDPA (FlashAttention-2 when installed on GPU)."
    )
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = Field(
        None, description="Stretch RoPE so the model accepts inputs longer than it was trained on."
    )
    train_from_scratch: bool = Field(
        False, description="Initialise the weights randomly from the model's config."
    )

    _split_adapters = field_validator("adapter_name_or_path", mode="before")(split_names)


class DataArgs(Section):
    template: str | None = Field(
        None,
        description="Chat template (e.g. llama3, qwen, chatml, smollm2) or `auto` to use the "
        "tokenizer's own. Defaults to the built-in model's template, else `auto`.",
    )
    dataset: list[str] = Field(
        default_factory=list,
        description="Training datasets: names from dataset_info.json or paths to data files, "
        "comma separated.",
    )
    eval_dataset: list[str] = Field(
        default_factory=list, description="Evaluation datasets, like `dataset`."
    )
    dataset_dir: str = Field(
        "data",
        description="Folder holding dataset_info.json and the data files; `builtin` means "
        "Tunery's own demo data.",
    )
    cutoff_len: int = Field(2048, gt=0, description="Maximum tokens per example after encoding.")
    max_samples: int | None = Field(
        None, gt=0, description="Use at most this many rows of each dataset."
    )
    val_size: float = Field(
        0.0,
        ge=0,
        description="Hold out this fraction (<1) or number (>=1) of training rows for evaluation.",
    )
    packing: bool | None = Field(
        None,
        description="Bin-pack examples into full rows (default: on for pt, off for sft). "
        "Examples never attend to each other.",
    )
    neat_packing: bool = Field(
        False,
        description="Packing where examples never attend to each other; turns packing on. Tunery "
        "always keeps packed examples apart, so this equals `packing: true`.",
    )
    train_on_prompt: bool = Field(False, description="Also learn the prompt tokens.")
    mask_history: bool = Field(
        False, description="Learn only the last assistant turn of each conversation."
    )
    default_system: str | None = Field(
        None, description="System prompt used when a row has none (default: the template's)."
    )
    tool_format: str | None = Field(
        None, description="Agent tuning: how tools and function calls are written (default: the template's)."
    )
    enable_thinking: bool = Field(
        True,
        description="Reasoning templates (qwen3, deepseekr1): keep the model's thinking; false "
        "trains and chats without it.",
    )
    preprocessing_num_workers: int | None = Field(
        None, ge=1, description="Processes used to tokenize the data."
    )
    overwrite_cache: bool = Field(False, description="Re-tokenize even if a cache exists.")
    tokenized_path: str | None = Field(
        None, description="Save the tokenized dataset here, or load it from here if it exists."
    )
    preprocessing_batch_size: int = Field(1000, gt=0, description="Rows per tokenization batch.")
    streaming: bool = Field(False, description="Stream the dataset (not supported yet).")

    _split_datasets = field_validator("dataset", "eval_dataset", mode="before")(split_names)

    @model_validator(mode="after")
    def check_masking(self) -> "DataArgs":
        if self.mask_history and self.train_on_prompt:
            raise ValueError("mask_history and train_on_prompt cannot both be true; choose one")
        return self

    @field_validator("streaming")
    @classmethod
    def reject_streaming(cls, value: bool) -> bool:
        if value:
            raise ValueError("streaming datasets are not supported yet; remove `streaming`")
        return value


class FinetuningArgs(Section):
    stage: Literal["pt", "sft", "rm", "dpo", "kto", "ppo", "grpo"] = Field(
        "sft",
        description="Training stage: pt (pre-training), sft, rm (reward model), dpo (DPO/IPO/ORPO/SimPO "
        "by pref_loss), kto, ppo or grpo.",
    )
    finetuning_type: Literal["full", "freeze", "lora"] = Field(
        "lora", description="Which weights train: all (full), the last layers (freeze), or LoRA."
    )
    lora_rank: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha (default: 2 x rank).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Modules that get LoRA: `all` (every linear layer but the output head) "
        "or names such as q_proj,v_proj.",
    )
    additional_target: list[str] | None = Field(
        None, description="Extra modules trained in full and saved with the adapter (e.g. embed_tokens)."
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices learn this many times faster."
    )
    freeze_trainable_layers: int = Field(
        2, description="Freeze tuning: train the last N layers (negative: the first N)."
    )
    freeze_trainable_modules: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Freeze tuning: module names trained inside those layers (`all` or mlp,self_attn).",
    )
    freeze_extra_modules: list[str] | None = Field(
        None, description="Freeze tuning: modules outside the layers to train too (e.g. embed_tokens)."
    )
    plot_loss: bool = Field(False, description="Save training_loss.png in output_dir.")
    pref_beta: float = Field(0.1, gt=0, description="DPO/KTO/ORPO/SimPO: the beta of the preference loss.")
    pref_ftx: float = Field(0.0, ge=0, description="DPO: weight of an added SFT loss on the chosen answers.")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "orpo", "simpo"] = Field(
        "sigmoid", description="Stage dpo's objective: sigmoid (DPO), hinge, ipo, orpo or simpo."
    )
    dpo_label_smoothing: float = Field(
        0.0, ge=0, le=0.5, description="DPO sigmoid: assumed share of flipped preference labels (cDPO)."
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO: the target reward margin.")
    kto_chosen_weight: float = Field(1.0, gt=0, description="KTO: weight of desirable examples.")
    kto_rejected_weight: float = Field(1.0, gt=0, description="KTO: weight of undesirable examples.")
    ref_model: str | None = Field(
        None, description="DPO/KTO reference model (default: the model itself before training; with LoRA "
        "the same weights with the adapter disabled)."
    )
    ref_model_adapters: list[str] | None = Field(None, description="Adapters merged into ref_model.")

    _split_modules = field_validator(
        "lora_target", "additional_target", "freeze_trainable_modules", "freeze_extra_modules",
        "ref_model_adapters", mode="before",
    )(split_names)

    @property
    def resolved_lora_alpha(self) -> int:
        return self.lora_alpha or self.lora_rank * 2

    @field_validator("freeze_trainable_layers")
    @classmethod
    def check_layers(cls, value: int) -> int:
        if value == 0:
            raise ValueError("freeze_trainable_layers must not be 0 (nothing would train)")
        return value


class TrainingArgs(Section):
    output_dir: str = Field("outputs/run", description="Where the adapter/weights, logs and checkpoints go.")
    overwrite_output_dir: bool = Field(False, description="Allow writing into a non-empty output_dir.")
    do_train: bool = Field(True, description="Train (set false with do_eval to only evaluate).")
    do_eval: bool = Field(False, description="Evaluate on the held-out data after training.")
    # transformers' defaults, so a LLaMA-Factory config that leaves them out keeps its meaning
    per_device_train_batch_size: int = Field(8, gt=0, description="Examples per step per device.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Examples per eval step per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (overrides epochs).")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr",
    ] = Field("linear", description="Learning-rate schedule after warmup.")
    lr_scheduler_kwargs: dict | None = Field(None, description="Extra arguments of the scheduler.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Warm up over this fraction of steps.")
    warmup_steps: int = Field(0, ge=0, description="Warm up over this many steps (overrides ratio).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, description="AdamW epsilon.")
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_hf"] = Field(
        "adamw_torch_fused",
        description="AdamW: adamw_torch_fused (default, as in transformers) runs PyTorch's fused kernel "
        "(on the CPU too: a LoRA step of 420 tensors in 3 ms instead of 18 ms); adamw_torch and "
        "adamw_hf its per-tensor loop.",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Clip gradients to this norm (0: off).")
    bf16: bool = Field(False, description="Train in bfloat16 (fast on GPUs and on CPUs with AMX).")
    fp16: bool = Field(False, description="Train in float16 with loss scaling (GPU only).")
    seed: int = Field(42, description="Random seed for weights, shuffling and dropout.")
    logging_steps: int = Field(10, gt=0, description="Log every N optimizer steps.")
    save_steps: int = Field(500, gt=0, description="Save a checkpoint every N optimizer steps.")
    save_total_limit: int | None = Field(None, gt=0, description="Keep only the newest N checkpoints.")
    save_only_model: bool = Field(
        False, description="Checkpoints hold only the weights (cannot resume optimizer state)."
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps (default: logging_steps).")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="When to evaluate during training (steps needs val_size or eval_dataset)."
    )
    report_to: list[Literal["none", "tensorboard", "all"]] = Field(
        default_factory=lambda: ["none"], description="Also log to: none or tensorboard."
    )
    logging_dir: str | None = Field(None, description="TensorBoard folder (default: output_dir/runs).")
    resume_from_checkpoint: str | bool | None = Field(
        None, description="A checkpoint folder, or true to resume from the latest in output_dir."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~25% slower."
    )
    max_tokens_per_forward: int | None = Field(
        None,
        ge=0,
        description=(
            "Run each flattened batch as forward/backward passes of at most this many tokens "
            "(whole examples; gradients are identical, activation memory is capped; a single "
            "longer example recomputes part of its layers in backward to stay near the cap). "
            "Default on the CPU, where memory rather than speed is short: 512 (fp32) or 1024 (bf16), "
            "twice that for the pair stages (rm, dpo, kto), whose pairs cannot be split; 0 = no cap."
        ),
    )
    heap_release: Literal["auto", "on_new_peak", "every_pass"] = Field(
        "auto",
        description=(
            "CPU: when the training loop gives the C heap's free pages back to the OS. "
            "on_new_peak: after a pass that raised the process's peak memory (fast); every_pass: "
            "after every forward/backward pass (the lowest peak, ~200 MB less on a 135M model in "
            "fp32, where it is ~8 % slower as every pass faults its pages back in); auto: "
            "on_new_peak in fp32 (every stage), every_pass with bf16/fp16 (at most a few % slower "
            "there, and its peak stays lower)."
        ),
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes feeding batches.")
    ddp_timeout: int = Field(1800, gt=0, description="Seconds a distributed process waits for the others.")
    use_cpu: bool = Field(False, description="Train on the CPU even if a GPU is present.")

    _split_report = field_validator("report_to", mode="before")(split_names)

    @field_validator("eval_strategy", mode="before")
    @classmethod
    def read_no_as_text(cls, value: object) -> object:
        """YAML reads a bare ``no`` as false; ``eval_strategy: no`` means the string."""
        return "no" if value is False else value

    @model_validator(mode="after")
    def check_precision(self) -> "TrainingArgs":
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        return self


class GenerationArgs(Section):
    max_new_tokens: int = Field(512, gt=0, description="Most tokens generated per reply.")
    do_sample: bool = Field(True, description="Sample (true) or decode greedily (false).")
    temperature: float = Field(0.95, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int = Field(50, ge=0, description="Sample from the k most likely tokens.")
    num_beams: int = Field(1, gt=0, description="Beam search width (1: no beam search).")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty for repeated tokens.")
    skip_special_tokens: bool = Field(True, description="Drop special tokens from the text.")


class InferenceArgs(Section):
    infer_backend: Literal["huggingface", "vllm"] = Field(
        "huggingface",
        description="Generation backend: huggingface (everywhere) or vllm (needs vLLM and a GPU).",
    )
    infer_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype for inference: auto is bf16 on a GPU, fp32 on the CPU."
    )
    vllm_maxlen: int = Field(4096, gt=0, description="vLLM: longest prompt plus reply, in tokens.")
    vllm_gpu_util: float = Field(0.7, gt=0, le=1, description="vLLM: fraction of GPU memory it may use.")
    vllm_enforce_eager: bool = Field(False, description="vLLM: disable CUDA graphs (less memory, slower).")


class EvaluationArgs(Section):
    do_predict: bool = Field(
        False, description="Generate for every eval_dataset example and score it (ROUGE, BLEU)."
    )
    predict_with_generate: bool = Field(
        False, description="Accepted for LLaMA-Factory configs: prediction always generates."
    )
    eval_num_beams: int | None = Field(
        None, gt=0, description="Beam width for prediction (default: num_beams)."
    )
    task: str | None = Field(
        None, description="Benchmark for `tunery eval`: a task folder name under task_dir, "
        "optionally with a split (e.g. mmlu_test, sample_test)."
    )
    task_dir: str = Field(
        "builtin", description="Folder holding benchmark task folders; `builtin` means Tunery's sample task."
    )
    n_shot: int = Field(5, ge=0, description="Solved examples shown before each benchmark question.")
    lang: Literal["en", "zh"] = Field("en", description="Language of the benchmark prompt.")
    save_dir: str | None = Field(None, description="Where `tunery eval` writes results.json.")


class ExportArgs(Section):
    export_dir: str | None = Field(None, description="Folder the merged model is written to.")
    export_size: int = Field(5, gt=0, description="Largest safetensors shard, in GB.")
    export_device: Literal["cpu", "auto"] = Field(
        "cpu", description="Merge on the CPU, or on the GPU when there is one (auto)."
    )
    export_legacy_format: bool = Field(
        False, description="Write .bin files instead of safetensors (not recommended)."
    )
    export_gguf: Literal["f16", "q8_0"] | None = Field(
        None, description="Also write a GGUF file (f16 or q8_0) for llama.cpp and Ollama."
    )


SECTIONS: dict[str, type[Section]] = {
    "model": ModelArgs,
    "data": DataArgs,
    "finetuning": FinetuningArgs,
    "training": TrainingArgs,
    "generation": GenerationArgs,
    "inference": InferenceArgs,
    "evaluation": EvaluationArgs,
    "export": ExportArgs,
    "quantization": QuantizationArgs,
    "methods": MethodArgs,
    "architecture": ArchitectureArgs,
    "rl": RLArgs,
}


class RunConfig(BaseModel):
    """Everything one run needs, in typed sections."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    model: ModelArgs = Field(default_factory=ModelArgs)
    data: DataArgs = Field(default_factory=DataArgs)
    finetuning: FinetuningArgs = Field(default_factory=FinetuningArgs)
    training: TrainingArgs = Field(default_factory=TrainingArgs)
    generation: GenerationArgs = Field(default_factory=GenerationArgs)
    inference: InferenceArgs = Field(default_factory=InferenceArgs)
    evaluation: EvaluationArgs = Field(default_factory=EvaluationArgs)
    export: ExportArgs = Field(default_factory=ExportArgs)
    quantization: QuantizationArgs = Field(default_factory=QuantizationArgs)
    methods: MethodArgs = Field(default_factory=MethodArgs)
    architecture: ArchitectureArgs = Field(default_factory=ArchitectureArgs)
    rl: RLArgs = Field(default_factory=RLArgs)

    @model_validator(mode="after")
    def check_run(self) -> "RunConfig":
        if self.training.eval_strategy != "no" and not (self.data.val_size or self.data.eval_dataset):
            raise ValueError("eval_strategy needs `val_size` or `eval_dataset` to evaluate on")
        return self

    @property
    def packing_enabled(self) -> bool:
        if self.finetuning.stage in ("rm", "dpo", "kto", "ppo", "grpo"):  # pairs, or prompts to roll out
            return False
        if self.data.neat_packing:  # as in LLaMA-Factory, neat packing implies packing
            return True
        if self.data.packing is None:
            return self.finetuning.stage == "pt"
        return self.data.packing

    def to_flat(self) -> dict:
        """The config as the flat key/value mapping users write in YAML."""
        flat: dict = {}
        for name in SECTIONS:
            flat.update(getattr(self, name).model_dump(mode="json"))
        return flat
