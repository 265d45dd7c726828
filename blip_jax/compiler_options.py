"""Per-program XLA options for GPUs, passed as ``jax.jit(..., compiler_options=...)``.

Only options that were measured to help (README "Measured results") are set, and only on GPUs.
Setting them per program leaves XLA_FLAGS and every other program at XLA's defaults.

XLA GPU records runs of kernels into CUDA graphs ("command buffers"). By default the
body of a ``lax.while_loop`` is not captured, so each decoding step launches its kernels one
by one from the host, and for a batch of 8 the launches, not the kernels, set the pace. With
WHILE and CONDITIONAL added, the whole token loop runs as one graph on the device (beam search,
batch 8, 20 tokens, H200: 55 -> 34 ms).
"""

from __future__ import annotations

import jax

# XLA's default command-buffer kinds, as a list that can be extended (per-program options take the
# full list; XLA_FLAGS' "+WHILE" syntax is not accepted there).
DEFAULT_COMMAND_BUFFERS = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "DYNAMIC_SLICE_FUSION")
COMMAND_BUFFER_CHOICES = ("default", "loops", "off")


def command_buffer_options(mode: str) -> dict[str, str] | None:
    """compiler_options for one program: 'default' (XLA's choice, no option), 'loops' (the default
    kinds plus WHILE and CONDITIONAL: whole decode loops as one graph), 'off' (every kernel
    launched from the host). None off GPUs."""
    if mode not in COMMAND_BUFFER_CHOICES:
        raise ValueError(f"command buffer mode must be one of {COMMAND_BUFFER_CHOICES}, got {mode!r}")
    if mode == "default" or jax.default_backend() != "gpu":
        return None
    kinds = DEFAULT_COMMAND_BUFFERS + ("WHILE", "CONDITIONAL") if mode == "loops" else ()
    return {"xla_gpu_enable_command_buffer": ",".join(kinds)}


def decode_compiler_options() -> dict[str, str] | None:
    """For generation programs (one jitted function around a lax.while_loop)."""
    return command_buffer_options("loops")


def train_compiler_options(mode: str = "default") -> dict[str, str] | None:
    """For train steps (one large straight-line program)."""
    return command_buffer_options(mode)
