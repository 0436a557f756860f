"""`tunery expand`: LLaMA Pro block expansion of a model into a new folder."""

import argparse


def add_expand(commands) -> None:
    parser = commands.add_parser(
        "expand",
        help="LLaMA Pro: add decoder blocks that leave the model's outputs unchanged",
        description="Interleave NUM_EXPAND copies of decoder blocks into the model (one after every "
        "num_layers / NUM_EXPAND blocks) with zeroed output projections, so the expanded model computes "
        "what the original did; then train only the new blocks with `use_llama_pro: true`. "
        "Example: tunery expand --model smollm2-135m-instruct --num_expand 6 --output models/smollm2-pro",
    )
    parser.add_argument("--model", required=True, help="model folder, .gguf file or built-in alias")
    parser.add_argument("--num_expand", "--num-expand", type=int, required=True,
                        help="blocks to add; must divide the model's number of layers")
    parser.add_argument("--output", required=True, help="new (or empty) folder for the expanded model")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="run the model folder's own Python code")
    parser.set_defaults(handler=run_expand)


def run_expand(args: argparse.Namespace) -> None:
    from tunery.model.expand import expand_model

    result = expand_model(args.model, args.num_expand, args.output, args.trust_remote_code)
    total = result.num_layers + result.num_expand
    print(f"Expanded {result.num_layers} layers to {total} in {result.folder}; "
          f"new blocks at {', '.join(map(str, result.new_layers))}.")
    print("Train only the new blocks with these keys:")
    for key, value in result.training_keys().items():
        print(f"  {key}: {str(value).lower() if isinstance(value, bool) else value}")
    print("(or finetuning_type: lora with use_llama_pro: true to put LoRA on the new blocks only)")
