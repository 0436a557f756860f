"""Keys and values Tunery knows from LLaMA-Factory but does not implement yet.

A user's existing config that uses one of these must fail with a sentence that
says so, never run while silently ignoring it. When a feature lands, its keys
move from here into ``schema.py``.
"""

PREFERENCE = "reward modelling / preference stages"
RL = "PPO / GRPO"
PRECISION = "quantization and advanced LoRA variants"
SERVING = "inference, evaluation, export and serving"

_KEYS_BY_FEATURE: dict[str, list[str]] = {
    PREFERENCE: [
        "pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing", "simpo_gamma",
        "kto_chosen_weight", "kto_undesirable_weight", "pref_bco_weight", "ld_alpha",
    ],
    RL: [
        "reward_model", "reward_model_type", "reward_model_adapters", "reward_model_quantization_bit",
        "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards",
        "ref_model", "ref_model_adapters", "ref_model_quantization_bit",
    ],
    PRECISION: [
        "quantization_bit", "quantization_method", "quantization_type", "double_quantization",
        "quantization_device_map", "use_dora", "use_rslora", "pissa_init", "pissa_iter",
        "pissa_convert", "loftq_init", "use_galore", "galore_target", "galore_rank",
        "galore_update_interval", "galore_scale", "galore_proj_type", "galore_layerwise",
        "use_apollo", "use_badam", "shift_attn", "use_llama_pro", "neftune_noise_alpha",
        "create_new_adapter", "upcast_layernorm", "upcast_lmhead_output", "use_unsloth",
        "enable_liger_kernel", "mixture_of_depths", "tool_format", "use_adam_mini",
        "freeze_vision_tower", "freeze_multi_modal_projector", "image_max_pixels",
        "video_max_pixels", "moe_aux_loss_coef", "use_muon",
    ],
    SERVING: [
        "infer_backend", "vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager", "export_dir",
        "export_size", "export_device", "export_quantization_bit", "export_legacy_format",
        "export_hub_model_id", "do_predict", "predict_with_generate", "eval_num_beams",
        "task", "task_dir", "n_shot", "lang", "save_dir", "infer_dtype",
    ],
    "distributed engines beyond accelerate's defaults": ["deepspeed", "fsdp", "fsdp_config"],
    "hub downloads (Tunery runs offline)": [
        "hf_hub_token", "ms_hub_token", "om_hub_token", "use_modelscope", "use_openmind",
        "push_to_hub", "hub_model_id",
    ],
    "multimodal models": ["media_dir", "image_dir", "audio_sampling_rate", "video_fps"],
}

UNSUPPORTED_KEYS: dict[str, str] = {
    key: feature for feature, keys in _KEYS_BY_FEATURE.items() for key in keys
}

# (key, value) pairs whose key we support but whose value we do not, yet
UNSUPPORTED_VALUES: dict[tuple[str, str], str] = {
    ("stage", stage): PREFERENCE for stage in ("rm", "dpo", "kto")
} | {
    ("stage", "ppo"): RL,
    ("stage", "grpo"): RL,
}
