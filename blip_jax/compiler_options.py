"""Per-program XLA options for GPUs, passed as ``jax.jit(..., compiler_options=...)``.

Only options that were measured to help (README "Measured results") are on by default, and only
on GPUs. Setting them per program leaves XLA_FLAGS and every other program at XLA's defaults.

XLA GPU records runs of kernels into CUDA graphs ("command buffers"). By default the body of a
``lax.while_loop`` is not captured, so each decoding step launches its kernels one by one from
the host, and for a batch of 8 the launches, not the kernels, set the pace. With WHILE and
CONDITIONAL added, the whole token loop runs as one graph on the device (beam search, batch 8,
20 tokens, H200: 55 -> 28-34 ms).

When a buffer a recorded graph uses moves between calls, XLA re-records the affected graph
nodes on the host before replaying them. In the pretraining step (about 4,800 kernels in one
graph) that update took 56 ms of host time per step on an H200, during which the GPU idled
(148 ms steps with 97 ms of kernels). Two remedies, neither measured on a GPU yet: the trainer
writes each step's metrics into the previous step's donated buffers, so no output moves
(blip_jax.train.step.jit_step; the temporary buffer may still move), and
``command_buffer_update="stable"`` asks XLA to give the graphs' buffers fixed virtual addresses,
so graphs replay without updates (off by default until measured).
"""

from __future__ import annotations

import functools

import jax

# XLA's default command-buffer kinds, as a list that can be extended (per-program options take the
# full list; XLA_FLAGS' "+WHILE" syntax is not accepted there).
DEFAULT_COMMAND_BUFFERS = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "DYNAMIC_SLICE_FUSION")
COMMAND_BUFFER_CHOICES = ("default", "loops", "off")
UPDATE_CHOICES = ("default", "stable")
# The name of XLA's "fixed addresses, no graph updates" mode has changed between releases
# (xla_gpu_command_buffer_update_mode): the first one this jaxlib accepts is used.
_STABLE_UPDATE_MODES = ("NEVER_UPDATE", "SKIP_TEMP", "VMM_PERSISTENT_TEMP")


@functools.cache
def _accepted_update_mode() -> str | None:
    """The first of _STABLE_UPDATE_MODES that this jaxlib's DebugOptions accept (None if none)."""
    for mode in _STABLE_UPDATE_MODES:
        try:
            jax.jit(lambda x: x + 1, compiler_options={"xla_gpu_command_buffer_update_mode": mode}).lower(
                jax.ShapeDtypeStruct((), "float32")).compile()
            return mode
        except Exception:  # noqa: BLE001 - jaxlib reports an unknown enum value as a runtime error
            continue
    return None


def command_buffer_options(mode: str = "default", update: str = "default") -> dict[str, str] | None:
    """compiler_options for one program, None off GPUs.

    mode: 'default' (XLA's graphs), 'loops' (XLA's kinds plus WHILE and CONDITIONAL: whole decode
    loops as one graph), 'off' (every kernel launched from the host).
    update: 'default' (graphs re-recorded where buffers moved), 'stable' (fixed buffer addresses,
    no re-recording; see the module docstring)."""
    if mode not in COMMAND_BUFFER_CHOICES:
        raise ValueError(f"command buffer mode must be one of {COMMAND_BUFFER_CHOICES}, got {mode!r}")
    if update not in UPDATE_CHOICES:
        raise ValueError(f"command buffer update must be one of {UPDATE_CHOICES}, got {update!r}")
    if jax.default_backend() != "gpu":
        return None
    options = {}
    if mode != "default":
        kinds = DEFAULT_COMMAND_BUFFERS + ("WHILE", "CONDITIONAL") if mode == "loops" else ()
        options["xla_gpu_enable_command_buffer"] = ",".join(kinds)
    if update == "stable":
        accepted = _accepted_update_mode()
        if accepted is None:
            raise ValueError(f"this jaxlib ({jax.__version__}) has none of the update modes {_STABLE_UPDATE_MODES}")
        options["xla_gpu_command_buffer_update_mode"] = accepted
    return options or None


# Settings of the generation program, read when it is first compiled (benchmarks may set them first).
DECODE_COMMAND_BUFFERS = "loops"
DECODE_COMMAND_BUFFER_UPDATE = "default"


def decode_compiler_options() -> dict[str, str] | None:
    """For generation programs (one jitted function around a lax.while_loop)."""
    return command_buffer_options(DECODE_COMMAND_BUFFERS, DECODE_COMMAND_BUFFER_UPDATE)


def train_compiler_options(mode: str = "default", update: str = "default") -> dict[str, str] | None:
    """For train steps (one large straight-line program)."""
    return command_buffer_options(mode, update)
