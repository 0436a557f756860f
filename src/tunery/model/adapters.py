"""Which weights train: full, freeze (last/first N layers) or LoRA through PEFT.

Semantics follow LLaMA-Factory so existing configs behave the same:
``freeze_trainable_layers`` N > 0 trains the last N layers, N < 0 the first
-N; ``lora_target: all`` puts LoRA on every linear layer except the output
head (and vision towers); ``additional_target`` modules train in full and are
saved with the adapter; trainable parameters are kept in fp32 even when frozen
ones are half precision. Frozen parameters have ``requires_grad=False`` so no
gradient is ever computed or stored for them.

LoRA variants come from the run's ``methods`` / ``quantization`` sections and map
onto PEFT's ``LoraConfig``: DoRA (``use_dora``, a trained magnitude vector per
output row), rsLoRA (``use_rslora``, scaling alpha/sqrt(r)), PiSSA (``pissa_init``:
A and B from the top singular vectors of W, the rest of W stays as the base; with
``pissa_convert`` the initial adapter is remembered so ``model.save`` can write
a plain LoRA adapter for the original base) and LoftQ (``loftq_bits``, see
``model.loftq``). NEFTune (``neftune_noise_alpha``) installs its embedding-noise
hook here too, for every finetuning type.

``build_param_groups`` makes the optimizer groups: no weight decay on biases
and norm weights, and LoRA+ (B matrices learn ``loraplus_lr_ratio`` times faster).
"""

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict

from tunery.config.schema import FinetuningArgs, RunConfig
from tunery.errors import ConfigError, ModelError
from tunery.model.patches import apply_adapter_patches

logger = logging.getLogger(__name__)

# load_model records the configured adapter folders on the model under this name so
# that apply_finetuning(model, finetuning_args) finds them without extra arguments.
# Module names never given LoRA by `lora_target: all`: output heads and vision parts.
NON_TEXT_MODULES = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "merger")

LORAPLUS_EMBEDDING_LR = 1e-6  # LLaMA-Factory's default loraplus_lr_embedding

# A PiSSA model trained with pissa_convert keeps its initial adapter (the saved-format state dict)
# under this attribute; model.save reads it to convert the trained adapter to plain LoRA.
PISSA_INITIAL_STATE = "tunery_pissa_initial_state"


def apply_finetuning(
    model: torch.nn.Module,
    finetuning_args: FinetuningArgs,
    adapter_name_or_path: Sequence[str] | None = None,
    for_training: bool = True,
    run_config: RunConfig | None = None,
) -> torch.nn.Module:
    """Set up the trainable parameters (or merge adapters for inference); returns the model to use.

    ``run_config`` supplies the method sections (DoRA, PiSSA, LoftQ, NEFTune, ...); without it
    their defaults apply (plain LoRA, no noise).
    """
    run_config = run_config or RunConfig()
    adapters = [str(p) for p in adapter_name_or_path or []]
    for path in adapters:
        check_adapter_dir(path)
    if not for_training:
        return merge_adapters(model, adapters)
    kind = finetuning_args.finetuning_type
    if adapters and kind != "lora":
        raise ConfigError(
            f"adapter_name_or_path needs `finetuning_type: lora` (got {kind}); "
            "merge the adapter first with `tunery export` to train it in full."
        )
    check_lora_variants(kind, run_config)
    if run_config.architecture.use_llama_pro:  # LLaMA Pro: only the blocks `tunery expand` added train
        from tunery.model.llama_pro import setup_llama_pro

        model = setup_llama_pro(model, finetuning_args, adapters, run_config)
    elif kind == "full":
        model.requires_grad_(True)
    elif kind == "freeze":
        setup_freeze(model, finetuning_args)
    else:
        model = setup_lora(model, finetuning_args, adapters, run_config)
        apply_adapter_patches(model)
    upcast_trainable(model)
    if run_config.methods.neftune_noise_alpha:
        from tunery.model.neftune import enable_neftune

        enable_neftune(model, run_config.methods.neftune_noise_alpha)
    log_trainable(model)
    return model


def check_adapter_dir(path: str) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelError(
            f"Adapter folder '{path}' has no adapter_config.json; point adapter_name_or_path at a "
            "folder saved by a LoRA run."
        )


def merge_adapters(model: torch.nn.Module, adapters: list[str]) -> torch.nn.Module:
    """Merge every adapter into the weights: inference then runs at base-model speed."""
    for path in adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    if adapters:
        logger.info("Merged %d adapter(s): %s", len(adapters), ", ".join(adapters))
    model.requires_grad_(False)
    return model


def upcast_trainable(model: torch.nn.Module) -> None:
    """Trainable weights live in fp32 so small updates are not lost to bf16 rounding."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def log_trainable(model: torch.nn.Module) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Trainable params: %d of %d (%.4f%%)", trainable, total, 100 * trainable / max(total, 1))


# ---------------------------------------------------------------- freeze


def count_layers(model: torch.nn.Module) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ConfigError("This model does not say how many layers it has, so freeze tuning cannot pick them.")


def module_names_by_kind(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(names of modules inside numbered layers, names of modules outside them)."""
    hidden, other = set(), set()
    for name, _ in model.named_parameters():
        found = re.search(r"\.(\d+)\.([^.]+)", name)
        if found and found.group(1) in ("0", "1"):  # layer 1 too: some models skip layer 0's modules
            hidden.add(found.group(2))
        if re.search(r"\.\d+\.", name) is None and "." in name:
            other.add(name.split(".")[-2])
    return hidden, other


def setup_freeze(
    model: torch.nn.Module, args: FinetuningArgs, layer_ids: Sequence[int] | None = None
) -> None:
    """Train only chosen modules of the last (or first) N layers (or of ``layer_ids``, as LLaMA Pro
    picks them), plus extra named modules."""
    if layer_ids is None:
        num_layers = count_layers(model)
        n = args.freeze_trainable_layers
        layer_ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    hidden, other = module_names_by_kind(model)
    modules = set(args.freeze_trainable_modules)
    for module in modules - {"all"}:
        if module not in hidden:
            raise ConfigError(
                f"freeze_trainable_modules: '{module}' is not a module of this model's layers; "
                f"choose from {', '.join(sorted(hidden))} or `all`."
            )
    extra = set(args.freeze_extra_modules or [])
    unknown = sorted(extra - other)
    if unknown:
        raise ConfigError(
            f"freeze_extra_modules: '{unknown[0]}' is not a module outside the layers; "
            f"choose from {', '.join(sorted(other))}."
        )
    layers = {str(idx) for idx in layer_ids}
    for name, param in model.named_parameters():
        param.requires_grad_(is_freeze_trainable(name, layers, modules, extra))
    logger.info(
        "Freeze tuning trains layers %s (%s)%s", ", ".join(sorted(layers, key=int)),
        ", ".join(sorted(modules)), f" and {', '.join(sorted(extra))}" if extra else "",
    )


def is_freeze_trainable(name: str, layers: set[str], modules: set[str], extra: set[str]) -> bool:
    """Whether parameter ``name`` trains: in a chosen layer and module, or in an extra module.

    The first number in a name is its layer (``model.layers.3.mlp...``); later numbers (MoE
    experts) are not. Extra modules match a whole name part outside the layers, so `norm`
    means the final norm, never every layer's ``input_layernorm``.
    """
    found = re.search(r"\.(\d+)\.([^.]+)", name)
    if found is None:
        return bool(extra & set(name.split(".")[:-1]))
    return found.group(1) in layers and ("all" in modules or found.group(2) in modules)


# ---------------------------------------------------------------- LoRA


def output_head_names(model: torch.nn.Module) -> set[str]:
    """Full module names of the output head(s), found by identity, not by guessing names."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return set()
    return {name for name, module in model.named_modules() if module is head}


def find_all_linear_modules(model: torch.nn.Module) -> list[str]:
    """Short names of every linear layer except the output head and vision parts (``lora_target: all``)."""
    heads = output_head_names(model) | {"lm_head", "output_layer"}
    names: set[str] = set()
    full_names: list[str] = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if "Linear" not in kind or "Embedding" in kind or name in heads:
            continue
        if any(part in name.split(".") for part in NON_TEXT_MODULES):
            continue
        names.add(name.split(".")[-1])
        full_names.append(name)
    head_short = {h.split(".")[-1] for h in heads}
    # PEFT matches short names as suffixes; if one equals the head's name, list full names instead.
    return sorted(full_names) if names & head_short else sorted(names)


def embedding_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the input and output embedding modules (for modules_to_save)."""
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    found = {name.split(".")[-1] for name, module in model.named_modules()
             if any(module is x for x in layers)}
    return sorted(found)


def setup_lora(
    model: torch.nn.Module, args: FinetuningArgs, adapters: list[str], run_config: RunConfig
) -> torch.nn.Module:
    """New LoRA weights, or LLaMA-Factory's resume: merge all adapters but the last, train the last.

    A resumed adapter keeps the variant it was trained with (its adapter_config.json says so).
    """
    for path in adapters[:-1]:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    if adapters:
        model.requires_grad_(False)
        return PeftModel.from_pretrained(model, adapters[-1], is_trainable=True)
    targets = find_all_linear_modules(model) if args.lora_target == ["all"] else args.lora_target
    lora_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=args.lora_rank,
        lora_alpha=args.resolved_lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=args.additional_target,
        **lora_variant_options(run_config),
    )
    try:
        model = get_peft_model(model, lora_config)
    except ValueError as err:
        if "not found" not in str(err) and "Target modules" not in str(err):
            raise
        available = ", ".join(find_all_linear_modules(model))
        raise ConfigError(
            f"lora_target/additional_target name modules this model does not have "
            f"({', '.join(args.lora_target)}); linear layers here: {available}."
        ) from None
    initialise_lora_variant(model, run_config)
    return model


# ---------------------------------------------------------------- LoRA variants


def check_lora_variants(finetuning_type: str, run_config: RunConfig) -> None:
    """Reject variant combinations that cannot mean what the user asked for."""
    methods, loftq_bits = run_config.methods, run_config.quantization.loftq_bits
    chosen = [key for key, on in (("use_dora", methods.use_dora), ("use_rslora", methods.use_rslora),
                                  ("pissa_init", methods.pissa_init), ("loftq_bits", loftq_bits))
              if on]
    if chosen and finetuning_type != "lora":
        raise ConfigError(f"{', '.join(chosen)} are LoRA variants: set `finetuning_type: lora`.")
    if methods.pissa_convert and not methods.pissa_init:
        raise ConfigError("pissa_convert converts a PiSSA adapter: set `pissa_init: true` as well.")
    if methods.pissa_init and loftq_bits:
        raise ConfigError("pissa_init and loftq_bits both initialise LoRA; choose one of them.")
    if loftq_bits:
        from tunery.model.loftq import check_loftq_available

        check_loftq_available(loftq_bits)
        if run_config.quantization.quantization_bit is not None:
            raise ConfigError(
                "LoftQ starts from the full-precision base and quantizes it itself: remove quantization_bit "
                "for training, and load the base with quantization_bit = loftq_bits for chat/export."
            )


def lora_variant_options(run_config: RunConfig) -> dict:
    """The LoraConfig keywords of the configured variant (DoRA, rsLoRA, PiSSA initialisation)."""
    methods = run_config.methods
    options: dict = {"use_dora": methods.use_dora, "use_rslora": methods.use_rslora}
    if methods.pissa_init:
        # PEFT: "pissa" is the exact SVD, "pissa_niter_N" a fast randomised SVD with N iterations
        niter = methods.pissa_iter
        options["init_lora_weights"] = "pissa" if niter == -1 else f"pissa_niter_{niter}"
    return options


def initialise_lora_variant(model: PeftModel, run_config: RunConfig) -> None:
    """Steps after PEFT built the adapter: LoftQ initialisation, remembering PiSSA's initial adapter."""
    if run_config.quantization.loftq_bits:
        from tunery.model.loftq import apply_loftq

        apply_loftq(model, run_config.quantization.loftq_bits, run_config.quantization.loftq_iter)
    if run_config.methods.pissa_convert:
        initial = get_peft_model_state_dict(model)
        setattr(model, PISSA_INITIAL_STATE, {key: value.detach().clone() for key, value in initial.items()})


# ---------------------------------------------------------------- optimizer groups


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters that get weight decay: not biases, not weights of norm layers (as HF Trainer)."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if not is_norm and "bias" not in param_name:
                names.add(full)
    return names


def build_param_groups(
    model: torch.nn.Module, finetuning_args: FinetuningArgs, learning_rate: float, weight_decay: float
) -> list[dict]:
    """Optimizer parameter groups over the trainable parameters (each group names itself)."""
    decay_names = decay_parameter_names(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ratio = finetuning_args.loraplus_lr_ratio
    if ratio is None:
        groups = [
            {"name": "decay", "params": [p for n, p in trainable if n in decay_names],
             "lr": learning_rate, "weight_decay": weight_decay},
            {"name": "no_decay", "params": [p for n, p in trainable if n not in decay_names],
             "lr": learning_rate, "weight_decay": 0.0},
        ]
    else:
        groups = loraplus_groups(trainable, decay_names, learning_rate, learning_rate * ratio, weight_decay)
    return [group for group in groups if group["params"]]


def loraplus_groups(
    trainable: list[tuple[str, torch.nn.Parameter]],
    decay_names: set[str],
    lr: float,
    lr_b: float,
    weight_decay: float,
) -> list[dict]:
    """LLaMA-Factory's LoRA+ split: B matrices and 1-D params at ``lr_b``, LoRA embedding B at 1e-6."""
    buckets: dict[str, list[torch.nn.Parameter]] = {
        "lora_a": [], "lora_b": [], "lora_b_nodecay": [], "embedding": []
    }
    for name, param in trainable:
        if "lora_embedding_B" in name:
            buckets["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            buckets["lora_b" if name in decay_names else "lora_b_nodecay"].append(param)
        else:
            buckets["lora_a"].append(param)
    return [
        {"name": "lora_a", "params": buckets["lora_a"], "lr": lr, "weight_decay": weight_decay},
        {"name": "lora_b", "params": buckets["lora_b"], "lr": lr_b, "weight_decay": weight_decay},
        {"name": "lora_b_nodecay", "params": buckets["lora_b_nodecay"], "lr": lr_b, "weight_decay": 0.0},
        {"name": "embedding", "params": buckets["embedding"], "lr": LORAPLUS_EMBEDDING_LR,
         "weight_decay": weight_decay},
    ]
