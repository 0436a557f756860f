"""Keys and values Tunery knows from LLaMA-Factory but does not implement yet.

A user's existing config that uses one of these must fail with a sentence that
says so, never run while silently ignoring it. When a feature lands, its keys
move from here into ``schema.py``.
"""

PREFERENCE = "BCO and LD-DPO preference variants"
RL = "PPO / GRPO"
PRECISION = "these optimizers, kernels and multimodal options"
EXPORT_QUANT = "quantized export (GPTQ)"

_KEYS_BY_FEATURE: dict[str, list[str]] = {
    PREFERENCE: ["pref_bco_weight", "ld_alpha", "ref_model_quantization_bit"],
    RL: ["reward_model_quantization_bit"],
    PRECISION: [
        "use_apollo", "use_badam", "create_new_adapter", "upcast_layernorm", "upcast_lmhead_output",
        "use_unsloth",
        "enable_liger_kernel", "mixture_of_depths", "use_adam_mini",
        "freeze_vision_tower", "freeze_multi_modal_projector", "image_max_pixels",
        "video_max_pixels", "moe_aux_loss_coef", "use_muon",
    ],
    EXPORT_QUANT: [
        "export_quantization_bit", "export_quantization_dataset", "export_quantization_nsamples",
        "export_quantization_maxlen",
    ],
    "distributed engines beyond accelerate's defaults": ["deepspeed", "fsdp", "fsdp_config"],
    "hub downloads (Tunery runs offline)": [
        "hf_hub_token", "ms_hub_token", "om_hub_token", "use_modelscope", "use_openmind",
        "push_to_hub", "hub_model_id", "export_hub_model_id",
    ],
    "multimodal models": ["media_dir", "image_dir", "audio_sampling_rate", "video_fps"],
    "other LLaMA-Factory / transformers options": [
        "resize_vocab", "new_special_tokens", "split_special_tokens", "add_special_tokens",
        "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "compute_accuracy",
        "include_num_input_tokens_seen", "disable_shuffling", "interleave_probs", "buffer_size",
        "eval_on_each_dataset", "dataloader_pin_memory", "dataloader_drop_last", "group_by_length",
        "label_smoothing_factor", "torch_compile", "tf32", "optim_target_modules", "model_revision",
        "cache_dir", "offload_folder", "print_param_status", "logging_first_step", "run_name",
        "gradient_checkpointing_kwargs", "use_reentrant_gc", "bf16_full_eval", "fp16_full_eval",
        "train_mm_proj_only", "freeze_language_model", "use_swanlab", "use_mca",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "ray_run_name", "ray_storage_path", "ray_num_workers",
        "save_on_each_node", "save_safetensors_only", "full_determinism", "eval_accumulation_steps",
        "eval_delay", "neftune_alpha", "lr_end", "data_seed", "auto_find_batch_size",
    ],
}

UNSUPPORTED_KEYS: dict[str, str] = {
    key: feature for feature, keys in _KEYS_BY_FEATURE.items() for key in keys
}

# Keys Tunery has no field for because it always behaves one way: a config that asks for that
# behaviour is accepted (the key is dropped); any other value is "not supported yet".
COMPATIBLE_DEFAULTS: dict[str, tuple] = {
    "save_strategy": ("steps",),
    "logging_strategy": ("steps",),
    "mix_strategy": ("concat",),
    "use_fast_tokenizer": (True,),
    "ddp_find_unused_parameters": (False, None),
    "save_safetensors": (True,),
    "ignore_pad_token_for_loss": (True,),
    "remove_unused_columns": (True,),
    "low_cpu_mem_usage": (True,),
    "disable_tqdm": (False,),
    "log_level": ("passive", "info"),
    "use_cache": (True, False),  # only matters for generation, which always uses the cache
}

# (key, value) pairs whose key we support but whose value we do not, yet
UNSUPPORTED_VALUES: dict[tuple[str, str], str] = {}
