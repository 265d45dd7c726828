"""make_global_batch on an 8-device CPU mesh (subprocess: XLA_FLAGS must precede jax import)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np, jax
    from blip_jax.data.distributed import make_global_batch
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"))
    local = {"pixel_values": np.arange(16 * 2 * 2 * 3, dtype=np.float32).reshape(16, 2, 2, 3),
             "input_ids": np.arange(16 * 5, dtype=np.int32).reshape(16, 5), "caption": np.array(["x"] * 16)}
    out = make_global_batch(local, mesh)
    assert set(out) == {"pixel_values", "input_ids"}, out.keys()
    x = out["input_ids"]
    assert x.shape == (16, 5) and x.dtype == np.int32
    assert x.sharding.spec == jax.P(("data", "fsdp")), x.sharding.spec
    shards = sorted((s.index[0].start, s.data.shape) for s in x.addressable_shards)
    assert shards == [(2 * i, (2, 5)) for i in range(8)], shards
    np.testing.assert_array_equal(np.asarray(out["pixel_values"]), local["pixel_values"])
    # axes missing from the mesh are ignored
    mesh2 = jax.make_mesh((8,), ("data",))
    y = make_global_batch({"a": np.ones((8, 3), np.float32)}, mesh2)["a"]
    assert y.sharding.spec == jax.P(("data",)) and len(y.addressable_shards) == 8
    print("OK")
""")


def test_make_global_batch_shards_batch_over_data_axes():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
