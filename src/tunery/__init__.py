"""Tunery: fine-tune large language models end to end."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (the `quant` extra; peft imports it whenever it is installed) logs two warnings that say
# nothing actionable to a Tunery user: at import, that it cannot download an optional CPU kernel from the
# Hugging Face hub (Tunery runs offline; its built-in CPU kernel is used), and, for every 8-bit layer on
# every step, that LLM.int8 casts activations to fp16 (it always does). Dropped before anything imports it.
_BITSANDBYTES_NOISE = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
}
for _name, _prefix in _BITSANDBYTES_NOISE.items():
    _logging.getLogger(_name).addFilter(lambda record, prefix=_prefix: not str(record.msg).startswith(prefix))
