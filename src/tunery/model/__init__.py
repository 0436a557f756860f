"""Models: load (local folder, GGUF file or built-in alias), fine-tuning setup, saving.

- ``load``: ``load_tokenizer(model_args)``, ``load_model(config, tokenizer, for_training)``.
- ``aliases`` / ``gguf``: built-in models and the GGUF -> safetensors cache under $TUNERY_HOME.
- ``adapters``: ``apply_finetuning`` (full / freeze / LoRA) and ``build_param_groups`` (LoRA+).
- ``save``: ``save_trained`` writes the adapter or weights atomically.
"""
