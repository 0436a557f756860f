"""Memory and precision machinery of the training loop.

On the CPU, memory rather than parallelism is what runs out, so the loop
(``train.loop``) bounds it three ways, none of which changes the gradients:

- token-capped forward passes (``forward_token_cap``): saved activations grow
  with the tokens of one pass, so a flat batch runs as passes of whole examples,
  and a single example (or preference pair) longer than the cap runs with
  activation checkpointing on just enough of its layers (``checkpoint_interval``)
  to save about what a capped pass saves;
- giving the C heap's free pages back to the OS (``HeapReleaser``) after a pass that
  raised the process's peak, or after every pass (``heap_release``): activations of
  varying sizes fragment glibc's heap, and peak RSS creeps up otherwise;
- a bounded oneDNN primitive cache (``bound_onednn_cache``): bf16 matmuls on the
  CPU go through oneDNN, which caches a compiled kernel per shape, and every pass
  has a new token count, so its default 1024-entry cache grows by ~55 MB a step;
- bf16 on the CPU through autocast (``cpu_autocast``) with PEFT's per-layer
  input casts switched off (``peft_autocast_inputs``): fp32 LoRA weights join
  the bf16 matmuls, cast once per pass, instead of every LoRA input being copied
  to fp32 (and saved for backward).
"""

import ctypes
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from tunery.config.schema import TrainingArgs

# fp32 tokens per pass on the CPU; bf16 activations take half the bytes, so bf16 passes take twice
# the tokens for about the same memory (SFT benchmark: fp32 512 tokens 2094 MB; bf16 1024 tokens
# 1999 MB, 31.9 s against 36.6 s with 512-token passes: fewer, larger passes waste less per op).
CPU_TOKENS_PER_FORWARD = 512


def forward_token_cap(args: TrainingArgs, device: torch.device, paired: bool = False) -> int:
    """Most tokens per forward pass (0 = no cap): ``max_tokens_per_forward``, else 512 fp32 /
    1024 bf16 tokens on the CPU, twice that when a pass holds preference pairs (``paired``).

    Saved activations grow with the tokens of one pass (~1.1 MB per token for a 135M model in
    fp32), and on the CPU memory, not parallelism, is what runs out: such passes keep
    the matmuls large enough to run at full speed while bounding the peak. A pair cannot be
    split, and one over the cap recomputes layers in backward: at 512 tokens most pairs of
    ``dpo_en_demo`` (cutoff 512) did; with 1024 the DPO benchmark ran in 88 s instead of
    100-106 s, at a peak of 2.7 GB, 54 % of LLaMA-Factory's. GPUs default to no cap (bigger passes use them
    better; set the key when memory is short).
    """
    if args.max_tokens_per_forward is not None:
        return args.max_tokens_per_forward
    if device.type != "cpu":
        return 0
    tokens = CPU_TOKENS_PER_FORWARD * 2 if args.bf16 else CPU_TOKENS_PER_FORWARD
    return tokens * 2 if paired else tokens


def cpu_autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the CPU (frozen weights are bf16 already; fp32 LoRA weights join the
    bf16 matmuls, cast once per pass); GPUs get theirs from accelerate."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.type == "cpu" and bf16)


def peft_autocast_inputs(model: torch.nn.Module, active: bool):
    """Under autocast, stop PEFT from casting each LoRA layer's input to the (fp32) LoRA dtype.

    Autocast runs the LoRA matmuls in bf16/fp16 anyway; PEFT's cast only adds a full-size fp32
    copy of every input (saved for backward, so also ~2x the activation memory). Measured on
    the CPU with bf16: casts were 25% of a step. Master LoRA weights and their gradients stay fp32.
    """
    if not active:
        return nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def load_libc():
    """glibc, when this process runs on it (``malloc_trim`` is a glibc extension)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


LIBC = load_libc()
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size now (Linux: ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


# Enough for every matmul shape of one pass (each is reused across all the layers), far
# below oneDNN's default of 1024. Measured on the bf16 SFT benchmark: 1024 -> 2261 MB peak,
# 128 -> 1914, 64 -> 1814, 32 -> 1752 at the same speed; 16 -> 1731 MB but 1.8x slower.
ONEDNN_CACHE_CAPACITY = "64"


def bound_onednn_cache() -> None:
    """Cap oneDNN's primitive cache unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY.

    oneDNN reads the variable when it first creates a primitive, so this must run before the
    process's first bf16 matmul (``run_training`` calls it first thing); later calls do nothing.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


def peak_resident_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``, in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HeapReleaser:
    """Gives the C heap's free pages back after a training pass, by the ``heap_release`` policy.

    Every release costs time twice: ``malloc_trim`` walks the heap, and the next pass faults
    every page it touches back in, zero-filled by the kernel (measured on the fp32 SFT
    benchmark: 7 s of system time in a 50 s run, releasing after each of its 39 passes).
    Kept, those pages serve the next pass at no cost; what they waste is what fragmentation leaves
    unusable. ``on_new_peak`` releases only after a pass that raised the process's peak
    resident size, which is when fragmentation has started to cost memory: 4-5 releases
    over the same run, 8 % faster (47.7 s against 51.6 s of wall time, median of 3 pairs),
    at a peak ~210 MB higher (2097 against 1885 MB; SmolLM2-135M). ``every_pass``
    keeps the lowest peak. ``auto`` is ``on_new_peak`` in fp32 and ``every_pass`` in half
    precision: the bf16 SFT benchmark ran at most ~4 % faster with fewer releases (33.7-34.7 s
    against 34.9-37.5 s, alternating runs) but peaked ~90 MB higher, 59 % of LLaMA-Factory's
    peak, too close to the budget. The fp32 DPO benchmark, whose passes hold pairs, ran 6 %
    faster with ``on_new_peak`` (92.1 and 94.7 s against 102.7 and 98.2 s; 2.2 M page faults
    against 7.3 M, 5.5 s of system time against 15) at a peak 80 MB higher (2.55 GB against
    2.47 GB, 53 % of LLaMA-Factory's).
    """

    def __init__(self, device: torch.device, policy: str = "auto", half_precision: bool = False):
        self.active = device.type == "cpu" and LIBC is not None
        if policy == "auto":
            policy = "every_pass" if half_precision else "on_new_peak"
        self.every_pass = policy == "every_pass"
        self.peak = 0

    def after_pass(self) -> None:
        if not self.active:
            return
        peak = peak_resident_bytes()
        if self.every_pass or peak > self.peak:
            LIBC.malloc_trim(0)
        self.peak = peak


def release_free_memory(device: torch.device) -> None:
    """Give the C heap's free pages back to the OS now (CPU, glibc only).

    Activations of varying sizes leave glibc's heap fragmented: freed blocks stay resident
    and the next pass, of other sizes, cannot always reuse them, so peak RSS creeps up by a
    gigabyte over a run. ``malloc_trim`` returns the free pages. It is not free: the next pass
    faults the pages back in (measured on the benchmark: ~0.45 s per 3 s step, against ~0.2 s
    when trimming once per optimizer step). The training loop decides when through
    ``HeapReleaser``.
    """
    if device.type != "cpu" or LIBC is None:
        return
    LIBC.malloc_trim(0)


def enable_gradient_checkpointing(model: torch.nn.Module, every_n_layers: int = 1) -> None:
    """Recompute activations in backward; non-reentrant, so frozen inputs need no grad hack.

    ``every_n_layers`` > 1 checkpoints only every n-th decoder layer (transformers >= 5).
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer name, transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    disable = getattr(model, "activation_checkpointing_disable", None)  # newer name, transformers >= 5.x
    if disable is not None:
        disable()
    else:
        model.gradient_checkpointing_disable()
    # enabling hooked the embeddings to make their output require grad (for reentrant checkpoints);
    # remove the hook so repeated toggles do not stack them
    model.disable_input_require_grads()


def supports_checkpointing(model: torch.nn.Module) -> bool:
    """Whether transformers can checkpoint this model's layers (remote-code models may not)."""
    return bool(getattr(model, "supports_gradient_checkpointing", False))


def checkpoint_interval(tokens: int, cap: int) -> int:
    """Checkpoint every n-th layer so that a pass of ``tokens`` saves about what ``cap`` tokens do.

    Un-checkpointed layers keep activations in proportion to the tokens; checkpointed ones keep
    only their input. Keeping at most ``cap / tokens`` of the layers bounds the saved activations
    near a capped pass's, and recomputes as few layers as that allows (all of them from 2x the cap).
    """
    share_to_recompute = 1.0 - cap / tokens
    return max(1, int(1.0 / share_to_recompute))


@contextmanager
def recomputing_activations(model: torch.nn.Module, every_n_layers: int = 1) -> Iterator[None]:
    """Activation checkpointing for the forward passes inside (their backward recomputes the layers).

    Only the forward needs the switch: a checkpointed layer records how to recompute itself.
    """
    enable_gradient_checkpointing(model, every_n_layers)
    try:
        yield
    finally:
        disable_gradient_checkpointing(model)
