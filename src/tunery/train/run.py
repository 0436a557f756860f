"""``run_training(config)``: a whole run from a RunConfig to a trained model on disk.

tokenizer -> template (fixes the tokenizer) -> data -> model -> trainable
weights -> the loop -> adapter/weights + tokenizer + run_config.yaml in
output_dir. The CLI and the web UI call this (the web UI by spawning ``tunery
train``); launchers call ``python -m tunery.train.run CONFIG [key=value ...]``,
e.g. under ``accelerate launch`` or ``torchrun`` for several processes.
"""

import logging
import sys
from pathlib import Path
from typing import Any

from tunery.config import RunConfig, load_config
from tunery.config.load import config_as_yaml
from tunery.errors import TuneryError
from tunery.fileio import write_text_atomic
from tunery.train.checkpoint import check_output_dir, resolve_resume
from tunery.train.loop import TrainLoop, create_accelerator
from tunery.train.memory import bound_onednn_cache
from tunery.train.stages import get_stage

logger = logging.getLogger(__name__)

CONFIG_FILE = "run_config.yaml"


def template_name(config: RunConfig) -> str:
    """The configured template, else the built-in model's own, else the tokenizer's (``auto``)."""
    from tunery.model.aliases import default_template_for

    return config.data.template or default_template_for(config.model.model_name_or_path) or "auto"


def load_tokenizer_and_template(config: RunConfig) -> tuple[Any, Any]:
    """The tokenizer, fixed by the run's chat template (eos, pad, stop words), and the template.

    Training, chat and the data check all start here, so a model is always
    prompted the way it was trained.
    """
    from tunery.data.templates import get_template
    from tunery.model.load import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    vocabulary_size = len(tokenizer)
    name = template_name(config)
    data = config.data
    template = get_template(
        name, tokenizer, default_system=data.default_system, enable_thinking=data.enable_thinking,
        tool_format=data.tool_format,
    )
    added = tokenizer.convert_ids_to_tokens(list(range(vocabulary_size, len(tokenizer))))
    if added:  # the commonest cause: a template of another model family
        logger.warning(
            "Template '%s' needs tokens this tokenizer lacks (%s); they get new, untrained embeddings. "
            "If this model was not trained with '%s', pick its own template (or `template: auto`).",
            name, ", ".join(added), name,
        )
    return tokenizer, template


def choose_batching(config: RunConfig, model: Any, stage: Any) -> None:
    """Flat batches with per-example attention where the model allows it, else padded batches.

    ``flash_attn: auto`` gets Tunery's per-example attention; ``fa2`` keeps examples
    apart by itself (from the position ids); an explicitly chosen ``sdpa``/``eager``
    kernel is honoured, which needs padded batches. A model that computes attention
    outside transformers' interface (BLOOM, remote code) cannot share a row safely.
    ``shift_attn`` (LongLoRA) switches to shift short attention, always with padded batches.
    """
    from tunery.model.attention import enable_varlen_attention, supports_varlen

    if config.architecture.shift_attn:
        # LongLoRA groups a row's tokens into 4 groups; in a flat row those groups would mix the
        # examples, so shift attention takes over the kernel and batches stay padded.
        from tunery.model.patches import shift_attn

        shift_attn.enable(model)
        stage.flat_batches = False
        return
    if not stage.flat_batches:
        return
    kernel = config.model.flash_attn
    if kernel in ("sdpa", "eager", "disabled") or not supports_varlen(model):
        if kernel == "auto":
            logger.warning("%s computes attention outside transformers' attention interface; "
                           "training with padded batches.", type(model).__name__)
        stage.flat_batches = False
    elif kernel == "auto":
        enable_varlen_attention(model)


def run_training(config: RunConfig) -> dict[str, Any]:
    """Train (and/or evaluate) as ``config`` says; returns the metrics also saved in all_results.json."""
    import torch
    from transformers import set_seed

    from tunery.data.pipeline import prepare_data
    from tunery.model.adapters import apply_finetuning
    from tunery.model.load import load_model

    args = config.training
    bound_onednn_cache()
    accelerator = create_accelerator(args)
    if args.do_train:  # fail on output_dir/resume mistakes before minutes of loading
        check_output_dir(args, resuming=resolve_resume(args) is not None)
    set_seed(args.seed)
    # LoRA B starts at zero, so early gradients and Adam moments are denormal floats, which x86
    # CPUs process ~100x slower: measured 32% of a step in AdamW's sqrt. Flushing them to zero
    # changes no logged loss and makes CPU training ~2x faster.
    torch.set_flush_denormal(True)
    tokenizer, template = load_tokenizer_and_template(config)
    with accelerator.main_process_first():  # the main process tokenizes and caches, the others reuse
        data = prepare_data(config, tokenizer, template)
    stage = get_stage(config.finetuning.stage, config, tokenizer)
    model = load_model(config, tokenizer, for_training=True)
    choose_batching(config, model, stage)
    model = stage.prepare_model(
        apply_finetuning(model, config.finetuning, config.model.adapter_name_or_path, run_config=config)
    )
    loop = TrainLoop(config, model, tokenizer, stage, data.train, data.eval, accelerator)
    metrics = loop.run()
    if args.do_train and accelerator.is_main_process:
        save_outputs(config, loop.model, tokenizer)
        stage.save_extras(accelerator.unwrap_model(loop.model), Path(args.output_dir))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def save_outputs(config: RunConfig, model: Any, tokenizer: Any) -> None:
    """The trained adapter/weights and tokenizer, then the resolved config (each written atomically)."""
    from tunery.model.save import save_trained

    output_dir = Path(config.training.output_dir)
    save_trained(model, tokenizer, output_dir, config)
    write_text_atomic(output_dir / CONFIG_FILE, config_as_yaml(config))
    logger.info("Saved the trained model and %s to %s", CONFIG_FILE, output_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m tunery.train.run CONFIG [key=value ...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m tunery.train.run CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = run_training(load_config(argv[0], argv[1:]))
    except TuneryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2  # as `tunery train`: 2 means bad input
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130  # as a shell reports Ctrl+C
    logger.info("Metrics: %s", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
