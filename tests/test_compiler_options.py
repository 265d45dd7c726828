"""Per-program XLA options (blip_jax.compiler_options): set on GPUs only, and accepted by XLA."""

import jax
import jax.numpy as jnp
import pytest

from blip_jax import compiler_options as co


def test_cpu_programs_get_no_options():
    for mode in co.COMMAND_BUFFER_CHOICES:
        for update in co.UPDATE_CHOICES:
            assert co.command_buffer_options(mode, update) is None
    assert co.decode_compiler_options() is None and co.train_compiler_options() is None


def test_gpu_options_parse_in_xla(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    loops = co.command_buffer_options("loops")["xla_gpu_enable_command_buffer"].split(",")
    assert loops[-2:] == ["WHILE", "CONDITIONAL"] and set(co.DEFAULT_COMMAND_BUFFERS) <= set(loops)
    assert co.command_buffer_options("off") == {"xla_gpu_enable_command_buffer": ""}
    assert co.command_buffer_options("default") is None
    assert co.decode_compiler_options() == co.command_buffer_options("loops")
    stable = co.command_buffer_options("default", "stable")
    assert stable["xla_gpu_command_buffer_update_mode"] in co._STABLE_UPDATE_MODES
    for bad in (dict(mode="sometimes"), dict(update="never")):
        with pytest.raises(ValueError, match="command buffer"):
            co.command_buffer_options(**bad)
    options = co.command_buffer_options("loops", "stable")
    monkeypatch.undo()
    # XLA's DebugOptions are shared by all backends: a CPU compile validates the names and values.
    for opts in (options, {"xla_gpu_enable_command_buffer": ""}):
        f = jax.jit(lambda x: x + 1, compiler_options=opts)
        assert float(f(jnp.float32(1))) == 2.0
