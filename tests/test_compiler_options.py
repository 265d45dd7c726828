"""Per-program XLA options (blip_jax.compiler_options): set on GPUs only, and accepted by XLA."""

import jax
import jax.numpy as jnp
import pytest

from blip_jax import compiler_options as co


def test_cpu_programs_get_no_options():
    for mode in co.COMMAND_BUFFER_CHOICES:
        assert co.command_buffer_options(mode) is None
    assert co.decode_compiler_options() is None and co.train_compiler_options() is None


def test_gpu_options_parse_in_xla(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    loops = co.command_buffer_options("loops")["xla_gpu_enable_command_buffer"].split(",")
    assert loops[-2:] == ["WHILE", "CONDITIONAL"] and set(co.DEFAULT_COMMAND_BUFFERS) <= set(loops)
    assert co.command_buffer_options("off") == {"xla_gpu_enable_command_buffer": ""}
    assert co.command_buffer_options("default") is None
    assert co.decode_compiler_options() == co.command_buffer_options("loops")
    with pytest.raises(ValueError, match="command buffer mode"):
        co.command_buffer_options("sometimes")
    monkeypatch.undo()
    # XLA's DebugOptions are shared by all backends: a CPU compile validates the names and values.
    for value in (",".join(loops), ""):
        f = jax.jit(lambda x: x + 1, compiler_options={"xla_gpu_enable_command_buffer": value})
        assert float(f(jnp.float32(1))) == 2.0
