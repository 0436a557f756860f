"""Write a merged model as one GGUF file (f16 or q8_0) that llama.cpp, Ollama and transformers read.

Supported: Llama-family models (``LlamaForCausalLM``, ``MistralForCausalLM``,
written as llama.cpp's ``llama`` architecture) and ``Qwen2ForCausalLM``, with a
byte-level BPE tokenizer (GPT-2 style, as SmolLM2, Llama 3 and Qwen2 use;
Mistral 7B's SentencePiece tokenizer is not one). ``check_gguf_supported``
refuses anything else *before* an export writes a byte, so asking for a GGUF
never ends in a half-finished folder.

What llama.cpp expects and transformers' GGUF loader undoes when reading:

- Llama attention: the rows of q_proj/k_proj are permuted from transformers'
  rotate-half RoPE layout to llama.cpp's interleaved one (``permute_qk``);
  ``transformers.modeling_gguf_pytorch_utils.LlamaTensorProcessor`` reverses it.
- Tensor names come from ``gguf.get_tensor_name_map`` (``blk.N.attn_q.weight``...);
  an output head equal to the embeddings (tied) is not written: its absence means
  "tied" to both readers.
- 1-D tensors (norms, biases) stay f32; 2-D tensors become f16, or q8_0 where the
  row length is a multiple of the 32-value block (else f16, as llama.cpp does).
- The tokenizer is stored as ``tokenizer.ggml.model = gpt2`` with tokens (padded
  with ``[PADn]`` up to the embedding rows), token types (added special tokens are
  CONTROL, other added tokens USER_DEFINED), merges, special ids and the chat template.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from tunery.errors import ModelError

logger = logging.getLogger(__name__)

QUANT_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

# The split regexes of the Hugging Face tokenizers llama.cpp knows by these pre-tokenizer names.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@dataclass(frozen=True)
class GgufArch:
    """How one transformers architecture is written: llama.cpp's arch and whether q/k are permuted."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool


SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "MistralForCausalLM": GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp reads it as llama
    "Qwen2ForCausalLM": GgufArch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}


def gguf_file_name(kind: str) -> str:
    return f"model-{kind}.gguf"


# ---------------------------------------------------------------- checks (before anything is written)


def check_gguf_supported(hf_config, tokenizer) -> None:
    """Refuse, with the reason, a model or tokenizer this writer cannot express in GGUF."""
    architecture = model_architecture(hf_config)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"GGUF export supports Llama-family models ({', '.join(SUPPORTED_ARCHITECTURES)}), "
            f"not {architecture}; remove `export_gguf` to export safetensors only, then convert them "
            "with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = rope_parameters(hf_config)
    if rope.get("rope_type", "default") != "default":
        raise ModelError(
            f"GGUF export does not write RoPE scaling ('{rope['rope_type']}'); remove `export_gguf` "
            "(and `rope_scaling`) or convert the safetensors export with llama.cpp's convert_hf_to_gguf.py."
        )
    backend = tokenizer_json(tokenizer)
    if backend.get("model", {}).get("type") != "BPE" or not uses_byte_level(backend):
        raise ModelError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and Qwen2 "
            "use); this model's tokenizer is not one. Remove `export_gguf` to export safetensors only."
        )


def model_architecture(hf_config) -> str:
    names = getattr(hf_config, "architectures", None) or []
    return names[0] if names else type(hf_config).__name__


def rope_parameters(hf_config) -> dict:
    """RoPE settings whichever way the config spells them (``rope_parameters`` in transformers 5)."""
    rope = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope, dict):
        return rope
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(hf_config, "rope_theta", 10000.0), **scaling}


def tokenizer_json(tokenizer) -> dict:
    """The fast tokenizer's full definition (model, merges, pre-tokenizer) as a dict."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers-backed) tokenizer; this one is not.")
    return json.loads(backend.to_str())


def uses_byte_level(backend: dict) -> bool:
    """True when the pre-tokenizer maps bytes to GPT-2's printable alphabet."""
    return "ByteLevel" in json.dumps(backend.get("pre_tokenizer")) or "ByteLevel" in json.dumps(
        backend.get("decoder")
    )


def detect_pre_tokenizer(backend: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (``default`` when unknown)."""
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        name = KNOWN_SPLITS.get(steps[0].get("pattern", {}).get("Regex", ""))
        if name:
            return name
    logger.warning(
        "Unknown pre-tokenizer %s; the GGUF says 'default', so llama.cpp may split text slightly "
        "differently than transformers does.", kinds,
    )
    return "default"


def source_pre_tokenizer(model_name_or_path: str) -> str | None:
    """The pre-tokenizer name recorded in the GGUF file a model was converted from, if any.

    A GGUF-converted model's tokenizer.json cannot say it (transformers reads e.g.
    ``smollm`` as plain GPT-2 splitting), but llama.cpp should split as the original did.
    """
    from tunery.model.aliases import find_alias

    path = Path(model_name_or_path).expanduser()
    alias = find_alias(model_name_or_path) if not path.exists() else None
    gguf_path = alias.gguf_path() if alias else path if path.suffix.lower() == ".gguf" else None
    if gguf_path is None or not gguf_path.is_file():
        return None
    field = gguf.GGUFReader(gguf_path).get_field(gguf.Keys.Tokenizer.PRE)
    return field.contents() if field is not None else None


# ---------------------------------------------------------------- writing


def write_gguf(
    model: torch.nn.Module, tokenizer, path: Path, kind: str, name: str, pre_tokenizer: str | None = None
) -> None:
    """Write ``model`` and ``tokenizer`` to ``path`` as GGUF ``kind`` (f16 or q8_0).

    ``pre_tokenizer`` is llama.cpp's pre-tokenizer name when known from a source GGUF
    file; otherwise it is detected from the tokenizer.
    """
    hf_config = model.config
    spec = SUPPORTED_ARCHITECTURES[model_architecture(hf_config)]
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[spec.arch])
    try:
        add_model_metadata(writer, hf_config, vocab_rows, kind, name)
        add_tokenizer_metadata(writer, tokenizer, vocab_rows, pre_tokenizer)
        for tensor_name, array, raw_type in convert_tensors(model, spec, kind):
            writer.add_tensor(tensor_name, array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def add_model_metadata(writer: gguf.GGUFWriter, hf_config, vocab_rows: int, kind: str, name: str) -> None:
    """The hyper-parameters llama.cpp builds the graph from (and transformers rebuilds its config from)."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(hf_config.max_position_embeddings)
    writer.add_embedding_length(hf_config.hidden_size)
    writer.add_block_count(hf_config.num_hidden_layers)
    writer.add_feed_forward_length(hf_config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(hf_config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hf_config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope_parameters(hf_config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(hf_config.rms_norm_eps))
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(FILE_TYPES[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer, vocab_rows: int, pre: str | None) -> None:
    """A byte-level BPE tokenizer in llama.cpp's ``gpt2`` form."""
    backend = tokenizer_json(tokenizer)
    tokens, types = token_table(tokenizer, vocab_rows)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or detect_pre_tokenizer(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    else:
        # A pure byte vocabulary has no merges, and an empty array cannot be stored; with
        # scores (and no merges) readers rebuild the merge list from the vocabulary: empty.
        writer.add_token_scores([0.0] * len(tokens))
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    adds_bos, adds_eos = added_specials(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def token_table(tokenizer, vocab_rows: int) -> tuple[list[str], list[int]]:
    """Every embedding row's token text and llama.cpp token type, as convert_hf_to_gguf.py writes them."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_rows):
        if index not in by_id:  # embedding rows beyond the tokenizer
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def added_specials(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds a bos token in front / an eos token at the end."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    adds_bos = tokenizer.bos_token_id is not None and full[:1] == [tokenizer.bos_token_id] != plain[:1]
    adds_eos = tokenizer.eos_token_id is not None and full[-1:] == [tokenizer.eos_token_id] != plain[-1:]
    return adds_bos, adds_eos


def convert_tensors(model: torch.nn.Module, spec: GgufArch, kind: str):
    """Yield (GGUF name, numpy array, raw type) per weight, permuted and quantized as llama.cpp wants."""
    hf_config = model.config
    name_map = gguf.get_tensor_name_map(spec.arch, hf_config.num_hidden_layers)
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    state_dict = model.state_dict()
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and is_tied_head(state_dict):
            continue  # a missing output.weight means "tied" to llama.cpp and transformers alike
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"GGUF export does not know where to put tensor '{hf_name}'.")
        data = tensor.detach().to("cpu", torch.float32)
        if spec.permute_qk and hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, heads, heads)
        elif spec.permute_qk and hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, heads, kv_heads)
        array, raw_type = encode_tensor(data.numpy(), kind)
        yield gguf_name, array, raw_type


def is_tied_head(state_dict: dict[str, torch.Tensor]) -> bool:
    """The output head holds the input embeddings (by value: what matters is what the file must hold)."""
    embeddings = state_dict.get("model.embed_tokens.weight")
    head = state_dict["lm_head.weight"]
    return embeddings is not None and embeddings.shape == head.shape and torch.equal(embeddings, head)


def permute_qk(weight: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: rotate-half pairs (i, i + d/2) become adjacent rows (2i, 2i+1)."""
    if kv_heads != heads:
        heads = kv_heads
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def encode_tensor(array: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """1-D tensors in f32; matrices in ``kind``, falling back to f16 where q8_0 blocks do not fit a row."""
    if array.ndim < 2:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = QUANT_TYPES[kind]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block_size:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, qtype), qtype
